"""On board: what runs on the satellite. ONNX / int8 export with its checks and costs, whole scenes in bounded
memory, downlink savings, and the side-by-side benchmark."""
