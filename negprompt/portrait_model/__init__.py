"""The embedded default model's own code: its training data and its attribute detector.

``portraits`` draws the procedural 64x64 portraits and their captions, ``detector`` reads attributes back from an
image (the app shows what it sees; the benchmarks count with it). The comparison tool itself needs neither to run a
model: it loads ``assets/portrait-model`` like any other diffusers folder. What trained the shipped weights lives in
the repository's ``training/``, outside the package.
"""
