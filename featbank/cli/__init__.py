"""The command lines: each module parses one script's arguments and calls the Python API.

``extract.py``, ``classify.py``, ``finetune.py``, ``analyze.py`` and ``verify.py`` at the
top of the repository are three-line wrappers around :mod:`.extract`, :mod:`.classify`,
:mod:`.finetune`, :mod:`.analyze` and :mod:`.verify`; :mod:`.common` holds the one-line
error handling and the options the scripts share.
"""
