"""``dir-train align``: Stage II with a task network in the loop (paper Eq. 8, gamma1 > 0).

A (the alignment network) trains so that the detector T sees D*(r+) as it sees the clean image: see
:mod:`training.train.align.objective` for the loss, :mod:`training.train.align.run` for the run and the
entries it writes.
"""
