; EIGER2 X 16M, native DECTRIS files (hand-written test geometry for sxlab)
; Beam centre (fs, ss) = (2070.5, 2180.2) pixels, 75 um pixels.

photon_energy = 12400 eV
clen = 0.1500 m
bandwidth = 0.0001

adu_per_photon = 1
res = 13333.3
data = /entry/data/data
dim0 = %
dim1 = ss
dim2 = fs
mask = /entry/instrument/detector/pixel_mask
mask_good = 0x0
mask_bad = 0xffffffff
flag_morethan = 4294967294

e16m/min_fs = 0
e16m/max_fs = 4147
e16m/min_ss = 0
e16m/max_ss = 4361
e16m/corner_x = -2070.5
e16m/corner_y = -2180.2
e16m/fs = x
e16m/ss = y

; Gaps between the 4 x 8 modules of 1028 x 512 pixels.
; The panel is omitted for the vertical gaps: there is only one.
badgap_fs1/min_fs = 1028
badgap_fs1/max_fs = 1039
badgap_fs1/min_ss = 0
badgap_fs1/max_ss = 4361

badgap_fs2/min_fs = 2068
badgap_fs2/max_fs = 2079
badgap_fs2/min_ss = 0
badgap_fs2/max_ss = 4361

badgap_fs3/min_fs = 3108
badgap_fs3/max_fs = 3119
badgap_fs3/min_ss = 0
badgap_fs3/max_ss = 4361

badgap_ss1/min_fs = 0
badgap_ss1/max_fs = 4147
badgap_ss1/min_ss = 512
badgap_ss1/max_ss = 549
badgap_ss1/panel = e16m

badgap_ss2/min_fs = 0
badgap_ss2/max_fs = 4147
badgap_ss2/min_ss = 1062
badgap_ss2/max_ss = 1099
badgap_ss2/panel = e16m

badgap_ss3/min_fs = 0
badgap_ss3/max_fs = 4147
badgap_ss3/min_ss = 1612
badgap_ss3/max_ss = 1649
badgap_ss3/panel = e16m

badgap_ss4/min_fs = 0
badgap_ss4/max_fs = 4147
badgap_ss4/min_ss = 2162
badgap_ss4/max_ss = 2199
badgap_ss4/panel = e16m

badgap_ss5/min_fs = 0
badgap_ss5/max_fs = 4147
badgap_ss5/min_ss = 2712
badgap_ss5/max_ss = 2749
badgap_ss5/panel = e16m

badgap_ss6/min_fs = 0
badgap_ss6/max_fs = 4147
badgap_ss6/min_ss = 3262
badgap_ss6/max_ss = 3299
badgap_ss6/panel = e16m

badgap_ss7/min_fs = 0
badgap_ss7/max_fs = 4147
badgap_ss7/min_ss = 3812
badgap_ss7/max_ss = 3849
badgap_ss7/panel = e16m
