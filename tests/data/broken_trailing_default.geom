; Defaults after the last panel apply to nothing
photon_energy = 9300 eV
clen = 0.120 m
res = 13333.3
adu_per_photon = 1

m0/min_fs = 0
m0/max_fs = 1029
m0/min_ss = 0
m0/max_ss = 513
m0/corner_x = -515.0
m0/corner_y = -257.0
m0/fs = x
m0/ss = y

; meant for m0, but top-level keys only affect panels mentioned later
max_adu = 12000
