"""Files shipped with restorer.

selftest_noisy.png: the centre 128x128 crop (offset 64,64) of samples/sidd_noisy_06.png
(SIDD, research terms; see samples/PROVENANCE.md), re-encoded PNG. `restorer --selftest`
restores it with the built-in denoiser.
"""
