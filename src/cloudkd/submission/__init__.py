"""The On Cloud N submission: packing a trained model with the frozen ``submission/main.py``, validating
predictions like the runtime does, and emulating the runtime locally (``cloudkd pack``, ``cloudkd runtime-test``).
"""
