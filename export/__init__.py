"""probret.export: checkpoint -> ONNX / TensorRT bundle with parity gates (docs/export.md).

    exporter.py  export_checkpoint(ckpt, out, ExportOptions(...)): the whole export, atomic
    forms.py     export forms: each head split into video side / pair side, O(T'd) per pair
    graphs.py    the four graph modules (text, frames, video side, pair scoring) and ONNX export
    parity.py    parity gates (graph outputs on fresh inputs, retrieval on a procedural benchmark)
    trt.py       TensorRT 10 engine builds (--trt, --fp16)

Reading and running a bundle is torch-free and lives in engine/ (bundle.py, runtime.py).
"""
