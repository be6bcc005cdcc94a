"""What every stage may import: errors, atomic writes, the one metric, model sizes, ONNX sessions, figures and
the command-line helpers. Nothing here imports a stage (``data`` .. ``submission``)."""
