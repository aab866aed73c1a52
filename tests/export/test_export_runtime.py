"""engine/runtime.py: providers, noise generator, running a bundle with torch unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from probret.engine.errors import ModelError
from probret.engine.runtime import BundleRuntime, cuda_device_count, draw_noise, provider_chain, tensorrt_status

NO_GPU = cuda_device_count() == 0


def test_noise_is_the_documented_generator():
    specs = [{"name": "noise_a", "distribution": "uniform", "scale": 1.0, "shape": [3, 4]},
             {"name": "noise_b", "distribution": "gaussian", "scale": 0.5, "shape": [2, 4]}]
    got = draw_noise(specs, 11)
    rng = np.random.Generator(np.random.PCG64(11))
    a = rng.random((3, 4), dtype=np.float32)
    b = rng.standard_normal((2, 4), dtype=np.float32) * np.float32(0.5)
    assert np.array_equal(got["noise_a"], a) and np.array_equal(got["noise_b"], b)
    assert got["noise_a"].dtype == np.float32 and got["noise_a"].min() >= 0 and got["noise_a"].max() < 1
    assert np.array_equal(draw_noise(specs, 11)["noise_b"], got["noise_b"])
    assert not np.array_equal(draw_noise(specs, 12)["noise_b"], got["noise_b"])


def test_provider_chain():
    assert provider_chain("cpu") == ["CPUExecutionProvider"]
    chain = provider_chain("auto")
    assert chain[-1] == "CPUExecutionProvider"
    with pytest.raises(ModelError, match="unknown device"):
        provider_chain("tpu")


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU messages")
def test_gpu_devices_without_gpu_fail_clearly():
    assert provider_chain("auto") == ["CPUExecutionProvider"]  # listed GPU providers are filtered out
    for device in ("cuda", "tensorrt"):
        with pytest.raises(ModelError, match=f"--device {device}: no CUDA GPU"):
            provider_chain(device)
    ok, reason = tensorrt_status()
    assert not ok and reason


def test_runtime_logs_and_records_providers(bundles, caplog):
    rt = BundleRuntime(bundles("meanp").out, device="cpu")
    with caplog.at_level("INFO", logger="probret.engine.runtime"):
        rt.encode_text(["a red circle"])
    assert rt.providers == {"text_encoder": "CPUExecutionProvider"}
    assert "text_encoder runs on CPUExecutionProvider" in caplog.text


def test_runtime_input_checks(bundles):
    rt = BundleRuntime(bundles("meanp").out, device="cpu")
    with pytest.raises(ValueError, match="frames must be"):
        rt.video_side(np.zeros((2, 3, 64), np.float32))
    with pytest.raises(ValueError, match="pixels must be"):
        rt.encode_videos(np.zeros((2, 3, 32, 32), np.float32))
    ids, cut = rt.tokenize(["word " * 100, "short"])
    assert ids.dtype == np.int32 and ids.shape == (2, 32) and cut.tolist() == [True, False]


def test_bundle_runs_with_torch_unimportable(bundles, tmp_path):
    """The whole pipeline (tokenize, decode, preprocess, four graphs) in a process where
    importing torch fails."""
    from probret.train.world import generate_world

    generate_world(tmp_path / "w", videos=4, seed=1, resolution=(48, 48), frames=8, splits=(0, 0, 1))
    script = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from probret.engine.runtime import open_runtime
        from probret.engine.video import sample_frames
        rt = open_runtime({str(bundles("spem").out)!r}, device="auto")
        px = np.stack([rt.preprocess(sample_frames({str(tmp_path / "w" / "videos")!r} + f"/video{{i}}.mp4", 4).frames)
                       for i in range(4)])
        video = rt.video_side(rt.encode_videos(px))
        s, u = rt.score(rt.encode_text(["a red circle moves left", "a star"]), video)
        assert s.shape == u.shape == (2, 4) and np.isfinite(s).all()
        assert "torch" not in sys.modules
        print("ok", sorted(set(rt.providers.values())))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
