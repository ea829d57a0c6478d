"""benchmarks/gpu_throughput.py in its CPU mode: both arms measured on every case, MFU from the FLOP count."""

import json

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("gpu_throughput")


def test_a_cpu_run_measures_both_arms_of_every_case(bench, tmp_path):
    out = tmp_path / "g.json"
    report = bench.main(["--cpu", "--steps", "2", "--warmup", "1", "--peak-tflops", "1.0", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    cases = report["cases"]
    assert [(c["shape"], c["length"], c["batch"]) for c in cases] == [c[:3] for c in bench.CPU_CASES[: len(cases)]]
    assert {c["quantization"] for c in cases} >= {"none"}
    for case in cases:
        for arm in ("run_trial", "trainer"):
            m = case[arm]
            assert m["tokens"] == 2 * case["batch"] * case["length"]  # the same work in both arms
            assert m["tokens_per_s"] > 0
            assert m["mfu"] == pytest.approx(m["tokens_per_s"] * case["flops_per_token"] / 1e12)
        assert case["speedup"] == pytest.approx(case["run_trial"]["tokens_per_s"] / case["trainer"]["tokens_per_s"])
    table = out.with_suffix(".md").read_text()
    assert table.count("| tiny |") == len(cases)


def test_the_flop_count_of_an_8b_llama_is_four_times_its_matmul_weights_plus_attention_and_head(bench):
    shape = bench.SHAPES["llama-8b"]
    per_token = bench.flops_per_token(shape, 2048, response_share=0.5)
    # Llama-3.1-8B: 8.03e9 parameters, of which 2 x 525e6 are the untied embedding and head.
    matmul = 8.03e9 - 2 * 128256 * 4096
    attention = 12 * 32 * 4096 * 2048
    head = 4 * 4096 * 128256 * 0.5
    assert per_token == pytest.approx(4 * matmul + attention + head, rel=0.01)


def test_the_peak_rate_comes_from_the_gpu_name_or_the_command_line(bench, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert bench.peak_tflops(torch.device("cuda"), None) == 756.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert bench.peak_tflops(torch.device("cuda"), None) == 989.5
    assert bench.peak_tflops(torch.device("cuda"), 123.0) == 123.0
    assert bench.peak_tflops(torch.device("cpu"), None) is None
