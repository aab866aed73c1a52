"""TensorRT engines (GPU machines only; skipped cleanly elsewhere)."""

from __future__ import annotations

import pytest

from probret.engine.runtime import cuda_device_count, tensorrt_status

TRT_OK, TRT_REASON = tensorrt_status()
needs_trt = pytest.mark.skipif(not TRT_OK, reason=f"needs TensorRT and a GPU: {TRT_REASON}")
pytestmark = pytest.mark.gpu


@needs_trt
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("method", ["xpool", "spem"])
def test_trt_engines_pass_their_gates(checkpoints, tmp_path, method, fp16):
    from probret.engine.bundle import load_bundle
    from probret.engine.runtime import BundleRuntime
    from probret.export.exporter import ExportOptions, export_checkpoint

    res = export_checkpoint(checkpoints(method), tmp_path / "b", ExportOptions(trt=True, fp16=fp16, benchmark_videos=16))
    trt = res.parity["tensorrt"]
    assert trt["passed"], trt
    assert trt["precision"] == ("fp16" if fp16 else "fp32")
    b = load_bundle(res.out)
    assert set(b.engines) == {"text_encoder", "frame_encoder", "video_side", "pair_score"}
    rt = BundleRuntime(b, device="tensorrt")
    text = rt.encode_text(["a red circle"])
    assert rt.providers["text_encoder"] == "TensorRT"
    assert text["text_sentence"].shape == (1, 64)


@pytest.mark.skipif(cuda_device_count() == 0, reason="needs a CUDA GPU")
def test_ort_cuda_provider_runs_a_bundle(bundles):
    from probret.engine.runtime import BundleRuntime

    rt = BundleRuntime(bundles("meanp").out, device="cuda")
    rt.encode_text(["a red circle"])
    assert rt.providers["text_encoder"] == "CUDAExecutionProvider"
