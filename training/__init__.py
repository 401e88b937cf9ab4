"""How the embedded models were trained: the code that made ``assets/``, kept beside the package, not in it.

``portrait_model`` trains the embedded portrait model, ``detector`` its attribute detector and
``negative_embedding`` the shipped negative embedding. Run them from the repository's root as
``python -m training.portrait_model ...`` (each module's docstring gives its commands). The package ships the
trained weights and never imports from here; everything here may import the package.
"""
