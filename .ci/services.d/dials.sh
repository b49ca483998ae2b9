# Debian's DIALS (dials.import, dxtbx) and the bitshuffle HDF5 filter plugin it needs to
# read bitshuffle-LZ4 chunks: the NXmx interoperability tests compare DIALS's detector
# model with sxlab's.  About 1 GB of packages; a few minutes on a fresh machine.
need_packages dials.import dials
need_packages /usr/lib/x86_64-linux-gnu/hdf5/serial/plugins/libh5bshuf.so bitshuffle
