"""The ArtSeg napari plugin (npe2 manifest ``napari.yaml``, entry point ``napari.manifest: artseg``).

Widgets: *Mask artifacts* (run a model on the selected image layer in a worker thread; adds a Labels layer of
artifact objects and the probability map, shows p(artifact) and the QC flags) and *Training data* (save a Labels
layer as ``<stem>_mask.tif``, run ``artseg train`` in the background). Sample data: a phantom field and its true
mask (``File > Open Sample > ArtSeg``). The plugin only moves arrays between layers and the engine; it needs the
``napari`` extra. Importing this package does not import napari or Qt.
"""
