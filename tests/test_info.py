from __future__ import annotations

import json

from conftest import HUB_METADATA, TINY

from sambay_cli.cli import main


def _run_json(capsys, path) -> dict:
    try:
        main(["info", str(path), "--json"])
    except SystemExit as e:
        assert e.code in (0, None)
    return json.loads(capsys.readouterr().out)


def test_info_real_config_only(capsys):
    info = _run_json(capsys, HUB_METADATA)
    assert info["parameters"]["total"] == 3_852_562_944
    assert info["official_phi4_mini_flash_shape"] is True
    assert info["layer_counts"] == {"mamba": 8, "swa": 8, "mamba_memory": 1, "full_attention": 1, "gmu": 7,
                                    "cross_attention": 7}
    assert info["layers"][1]["window"] == 512 and info["layers"][17]["window"] is None
    assert info["weights"]["index_total_size"] == 7_706_608_640
    assert len(info["weights"]["missing_shards"]) == 2
    assert info["kv_cache_bytes_per_token"]["bf16"] == 2 * 20 * 64 * 2


def test_info_tiny_with_weights(capsys):
    info = _run_json(capsys, TINY)
    assert info["official_phi4_mini_flash_shape"] is False
    assert info["parameters"]["total"] == 392_000
    w = info["weights"]
    assert w["files"][0]["name"] == "model.safetensors" and w["files"][0]["tensors"] == 116
    # A_log (3 Mamba layers × 128 × 16) and λ (4 attention layers × 4 × 16) are stored in float32
    assert w["parameters_by_dtype"]["float32"] == 3 * 128 * 16 + 4 * 4 * 16


def test_info_table_output(capsys):
    try:
        main(["info", str(TINY)])
    except SystemExit as e:
        assert e.code in (0, None)
    out = capsys.readouterr().out
    assert "Layer map" in out and "cross_attention" in out and "392,000" in out
