"""The embedded default model's own code: its training data, its attribute detector and its training.

``portraits`` draws the procedural 64x64 portraits and their captions, ``detector`` reads attributes back from an
image (the app shows what it sees; the benchmarks count with it), ``train`` trains the model. The comparison tool
itself needs none of it: it loads ``assets/portrait-model`` like any other diffusers folder.
"""
