"""Data sources → ``SourceItem``s: a shape id known before loading, and a loader.

The ingest stage lists items cheaply, skips the ids it already holds, and calls
``item.load()`` for the rest; a failing load (``ShapeError``, ``OSError``, ``ValueError``
naming the file) rejects that item only. Listing itself fails only for configuration
errors (a missing dataset folder, an unknown category in ``data.categories``).

Sources (``data.source``), one reader each, behind ``registry`` (the one list of names):

- ``shapenetpart`` (``shapenetpart.py``): the official v0_normal layout,
  ``<synset>/<id>.txt`` with lines ``x y z nx ny nz label`` (global part ids;
  category-local = global − the category's start). Splits from
  ``train_test_split/shuffled_{split}_file_list.json``; ``all`` = every file present. Ids
  ``shapenetpart/<synset>/<id>``.
- ``psb`` (``psb.py``): Labeled PSB, ``<Category>/<id>.off`` + ``<id>_labels.txt``. Ids
  ``psb/<Category>/<id>``.
- ``files`` (``files.py``): every mesh or point cloud trimesh reads under ``data.path``,
  unlabelled. Ids ``files/<path relative to data.path, without extension>``.
- ``procedural``: served by ``generation.procedural.reader``, registered when ``generation``
  is imported (distill never imports generation). Ids, splits and filters are the
  generation stage's.
- ``mix`` (``mix.py``): several of the above (``data.mix``), each with its own count per
  category, the items interleaved in the ratio of the counts; ids keep each source's
  prefix, so they never collide (a repeated id raises ``ValueError``).

``data.vocabulary`` (a list of datasets) moves every loaded shape onto the part
vocabulary those datasets share (``distill.vocab.to_vocabulary``).

Splits other than ShapeNetPart's (``common.split_ids``): ids sorted (numerically when
numeric) within each category, ``train`` = first half, ``test`` = the rest, ``val`` =
none. ``per_category`` then keeps the first N of each category.
"""

from distill.readers.registry import SourceItem, iter_items, register_reader

__all__ = ["SourceItem", "iter_items", "register_reader"]
