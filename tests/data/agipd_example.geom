; AGIPD-like detector: two modules of two ASICs each.
; Hand-written test geometry for sxlab; values are plausible, not measured.
; Data layout: /entry_1/data_1/data, shape (frames, modules, 128 ss, 128 fs).

photon_energy = /entry_1/instrument_1/source_1/photon_energy eV
clen = 0.1247 m
bandwidth = 0.0008
peak_list = /entry_1/result_1
peak_list_type = cxi

; Defaults for every panel mentioned below
res = 5000                 ; 200 um pixels
adu_per_eV = 0.0075
max_adu = 65000
data = /entry_1/data_1/data
dim0 = %
dim2 = ss
dim3 = fs
mask = /entry_1/data_1/mask
mask_good = 0x0
mask_bad = 0xffff
flag_lessthan = -10
coffset = 0.0

; Module 0, left of the beam: ss runs outwards along -x, fs runs downwards
p0a0/dim1 = 0
p0a0/min_fs = 0
p0a0/max_fs = 127
p0a0/min_ss = 0
p0a0/max_ss = 63
p0a0/fs = +0.0012x -0.9999y
p0a0/ss = -0.9999x -0.0012y
p0a0/corner_x = -20.5
p0a0/corner_y = 130.0

p0a1/dim1 = 0
p0a1/min_fs = 0
p0a1/max_fs = 127
p0a1/min_ss = 64
p0a1/max_ss = 127
p0a1/fs = +0.0012x -0.9999y
p0a1/ss = -0.9999x -0.0012y
p0a1/corner_x = -86.4934
p0a1/corner_y = 129.9208
p0a1/mask1_data = /entry_1/data_1/hot_pixels
p0a1/mask1_file = hot_pixels.h5
p0a1/mask1_goodbits = 0x1
p0a1/mask1_badbits = 0x6

; Module 1 sits half a millimetre further downstream, and its gain was
; calibrated per photon at 9.3 keV
coffset = 0.0005
adu_per_photon = 69.75

p1a0/dim1 = 1
p1a0/min_fs = 0
p1a0/max_fs = 127
p1a0/min_ss = 0
p1a0/max_ss = 63
p1a0/fs = -0.0008x +1.0000y
p1a0/ss = +1.0000x +0.0008y
p1a0/corner_x = 22.0
p1a0/corner_y = -131.5

p1a1/dim1 = 1
p1a1/min_fs = 0
p1a1/max_fs = 127
p1a1/min_ss = 64
p1a1/max_ss = 127
p1a1/fs = -0.0008x +1.0000y
p1a1/ss = +1.0000x +0.0008y
p1a1/corner_x = 88.0
p1a1/corner_y = -131.4472
p1a1/mask_edge_pixels = 1

; Shadow of the beam stop holder, in lab coordinates (pixels)
badbeamstop/min_x = -30.0
badbeamstop/max_x = 30.0
badbeamstop/min_y = -12.0
badbeamstop/max_y = 12.0

; A hot column on the second ASIC of module 0 (data-array coordinates)
badhotcolumn/min_fs = 10
badhotcolumn/max_fs = 10
badhotcolumn/min_ss = 64
badhotcolumn/max_ss = 127
badhotcolumn/panel = p0a1

bad_p1_corner/min_fs = 120
bad_p1_corner/max_fs = 127
bad_p1_corner/min_ss = 0
bad_p1_corner/max_ss = 5
bad_p1_corner/panel = p1a0

rigid_group_q0 = p0a0,p0a1
rigid_group_q1 = p1a0,p1a1
rigid_group_collection_quadrants = q0,q1
