"""The conformance kit: every engine-level check the in-tree backends pass, as a pytest suite a
vendor runs against an installed backend with one command:

    python -m pytest --pyargs octavo.testing.conformance --octavo-device NAME

(`--octavo-backend module:Class` or `file.py:Class` checks a backend class that is not
registered; `--octavo-families llama,qwen2` narrows the model families; `-p octavo.testing.plugin`
loads the plugin where pytest's plugin autoloading is off.) Each check builds tiny random
models of the families the backend declares (`Backend.architectures`) and compares with HF
transformers in fp32; the run ends with a summary to paste into a release note.
"""
