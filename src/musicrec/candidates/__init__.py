"""Candidate generators: top-popular, ALS user-to-item and item-to-item, i2i from history,
item-kNN, content-based (TF-IDF), audio autoencoder and random. See :mod:`musicrec.candidates.base`."""
