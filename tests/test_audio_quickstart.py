"""The audio recipe end to end on a seconds-long config, and `mmar generate --modality audio` to WAV."""

import json
import subprocess
import sys

import soundfile

from mmar.pipeline import Pipeline
from trainers.quickstart import run_quickstart


def test_tiny_audio_quickstart_then_generate_wav(tmp_path, capsys):
    out = tmp_path / "qs"
    # delay here (flat's generation is tested in test_audio_generation.py): 28 steps a clip instead of 100
    report = run_quickstart(out=out, recipe="audio", tiny=True, num_prompts=3, per_prompt=1, pattern="delay")
    for name in ("samples.png", "curves.png", "report.md", "report.json", "pipeline/pipeline.json",
                 "tokenizer_run/report.json", "ar_run/metrics.jsonl"):
        assert (out / name).is_file(), name
    wavs = sorted((out / "samples").glob("*.wav"))
    assert len(wavs) == 4 and soundfile.info(wavs[0]).subtype == "PCM_16" and soundfile.info(wavs[0]).samplerate == 16000
    saved = json.loads((out / "report.json").read_text())
    assert saved["prompt_following"]["count"] == 3 and set(saved["prompt_following"]) >= {"pitch", "rhythm", "all"}
    assert saved["pattern"] == "delay" and saved["transformer_calls_per_second_of_audio"] == (25 + 4 - 1) / 0.5
    assert set(saved["tokenizer"]["levels"]) == {"1", "2", "4"} and saved["tokenizer"]["bitrate"] == 50 * 4 * 4
    assert report["heads"] == {"audio": "next_token"}
    pipeline = Pipeline.from_pretrained(out / "pipeline")
    assert pipeline.modalities == ["audio"] and pipeline.spec("audio").pattern == "delay"

    from demos.text_to_audio import main as demo
    from mmar.cli import main as cli

    command = ["generate", "--model", str(out / "pipeline"), "--modality", "audio", "--prompt",
               "a pluck playing E4 four times"]
    assert cli(command + ["--num", "2", "--out", str(tmp_path / "clips")]) == 0
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == ["000.wav", "001.wav"]
    assert cli(command + ["--num", "2", "--out", str(tmp_path / "many.wav")]) == 0
    assert (tmp_path / "many-000.wav").is_file() and (tmp_path / "many-001.wav").is_file()
    assert cli(command + ["--out", str(tmp_path / "a.png")]) == 2
    assert "audio .wav" in capsys.readouterr().err
    assert demo(["--model", str(out / "pipeline"), "--out", str(tmp_path / "a.wav")]) == 0  # one clip: that file
    samples, rate = soundfile.read(tmp_path / "a.wav", dtype="int16")
    assert rate == 16000 and samples.shape == (8000,) and soundfile.info(tmp_path / "a.wav").subtype == "PCM_16"


def test_text_to_audio_demo_answers_help():
    result = subprocess.run([sys.executable, "demos/text_to_audio.py", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "WAV" in result.stdout


def test_tiny_speech_quickstart_command(tmp_path):
    """`mmar quickstart --recipe speech`: espeak-ng words through the same codec + model path, prompt-following
    heard by a tiny spoken-word judge trained into the run folder."""
    from mmar.cli import main as cli

    out = tmp_path / "speech"
    assert cli(["quickstart", "--recipe", "speech", "--tiny", "--out", str(out), "--num-prompts", "10"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"] == "speech" and report["pattern"] == "delay"
    scores = report["prompt_following"]
    assert scores["count"] == 20 and 0 <= scores["word"] == scores["all"] <= 1 and 0 < scores["judge_accuracy"] <= 1
    assert len(list((out / "speech_judge").glob("*/model.safetensors"))) == 1  # the tiny judge, not ~/.cache's
    assert "spoken-word judge" in (out / "report.md").read_text()
    assert len(list((out / "samples").glob("*.wav"))) == 4 and (out / "samples.png").is_file()
    assert Pipeline.from_pretrained(out / "pipeline").sources == {"audio": "speech"}
