"""Plumbing shared by the whole package, each concern in one small module that imports nothing heavy:

* :mod:`~modernalbert.utils.io`: atomic writes of files and folders (readable as ``save_pretrained``'s are), disk-full
  reporting and file checksums;
* :mod:`~modernalbert.utils.locking`: exclusive folder locks that name their holder (run folders, fetch cache);
* :mod:`~modernalbert.utils.hub`: the one rule for "local folder or Hugging Face Hub id?";
* :mod:`~modernalbert.utils.config`: typed, strict configuration dataclasses built from YAML / command-line mappings;
* :mod:`~modernalbert.utils.timing`: interleaved timing and paired-ratio statistics for speed measurements.
"""
