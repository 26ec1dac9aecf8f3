"""``talk3d serve``: a local web page over the trained portraits (:mod:`.app`, :mod:`.page`)."""
