"""Tracebacks and silently accepted values of issue 29 turned into one-line errors (exit code 2, nothing written):
a malformed threshold model (baseline threshold predict --model), NaN or text cloud-cover thresholds (onboard
downlink --thresholds). Each test failed on the code before its fix."""

import pytest

from conftest import invoke, one_line_refusal, snapshot, user_folder


_one_line_refusal = one_line_refusal


@pytest.mark.parametrize("model", [
    "[1, 2]", "{}", '{"method": "brightness-whiteness"}',
    '{"method": "brightness-whiteness", "brightness_min": "abc", "whiteness_max": 1.0}',
    '{"method": "brightness-whiteness", "brightness_min": 0.1, "whiteness_max": "abc"}',
    '{"method": "brightness-whiteness", "brightness_min": NaN, "whiteness_max": 1.0}',
    '{"method": "brightness-whiteness", "brightness_min": 0.1, "whiteness_max": "nan"}',
    '{"method": "brightness-whiteness", "brightness_min": 0.1, "whiteness_max": 1.0, "bogus": 3}',
], ids=["list", "empty", "no-thresholds", "text", "text-inf", "nan", "nan-text", "unknown-key"])
def test_a_malformed_threshold_model_is_one_line(small_data, tmp_path, capsys, model):
    (tmp_path / "t.json").write_text(model)
    before = snapshot(tmp_path)
    code, text = invoke(["baseline", "threshold", "predict", "--model", tmp_path / "t.json", "--features",
                         small_data / "test_features", "--out", tmp_path / "m"], capsys)
    _one_line_refusal(code, text, "t.json")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("thresholds", ["abc", "0.1,nan", "0.1,,x", "-0.5", "1.5", "inf"])
def test_downlink_thresholds_must_be_cloud_fractions(small_data, capsys, thresholds):
    code, text = invoke(["onboard", "downlink", "--pred", small_data / "test_labels", "--thresholds", thresholds],
                        capsys)
    _one_line_refusal(code, text, "--thresholds")

