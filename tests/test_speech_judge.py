"""The spoken-word judge and the speech checker: voices kept apart, a tiny judge that learns, its cache,
its input checks (CPU, espeak-ng; a seconds-long judge trained once for the whole file)."""

import pytest
import torch

from mmar.data.speech import HELD_OUT_VOICES, VOICES, WORDS, speak
from mmar.evaluation import CHECKERS
from mmar.evaluation.checkers import SpeechChecker
from mmar.evaluation.prompt_following import report_markdown
from mmar.evaluation.speech_judge import (JUDGE_PITCHES, JUDGE_SPEEDS, JUDGE_VOICES, TEST_VOICES, TINY_TRAINING,
                                          JudgeTraining, SpeechJudge, accuracy, as_clips, load_or_train, render,
                                          train_judge)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(judge, report, cache folder) of the tiny judge, trained once into a fresh cache (~7 s on one thread)."""
    cache = tmp_path_factory.mktemp("judge_cache")
    judge, report = load_or_train(TINY_TRAINING, cache, progress=False)
    return judge, report, cache


def test_the_three_sets_of_voices_share_no_voice_and_test_accents_are_unheard():
    assert not set(JUDGE_VOICES) & set(VOICES)
    assert not set(TEST_VOICES) & (set(VOICES) | set(JUDGE_VOICES))
    assert set(HELD_OUT_VOICES) <= set(TEST_VOICES)
    accent = lambda voice: voice.split("+")[0]  # noqa: E731
    assert not {accent(v) for v in TEST_VOICES} & {accent(v) for v in (*VOICES, *JUDGE_VOICES)}
    assert len(set(JUDGE_VOICES)) == len(JUDGE_VOICES) >= 20


def test_tiny_judge_learns_its_training_words(trained):
    judge, report, _ = trained
    assert report["train_accuracy"] >= 0.6  # chance is 0.1
    assert report["held_out_accuracy"] >= 0.3 and set(report["per_word_accuracy"]) == set(WORDS)
    clips, words = render(20, JUDGE_VOICES, JUDGE_SPEEDS, JUDGE_PITCHES, seed=7)  # fresh draws of its voices
    assert clips.shape == (20, 1, 16000) and words == list(WORDS) * 2
    assert accuracy(judge, clips, words) >= 0.4


def test_training_is_deterministic_by_seed_even_under_no_grad():
    training = JudgeTraining(num_clips=10, num_test_clips=10, steps=3, batch_size=4, width=4, seed=3)
    first, report = train_judge(training)
    with torch.no_grad():  # first use inside an evaluation
        second, _ = train_judge(training)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert report["settings"]["seed"] == 3 and report["num_clips"] == 10


def test_the_cache_round_trips_and_refuses_altered_weights(trained, tmp_path):
    import shutil

    judge, report, cache = trained
    folders = [path for path in cache.iterdir() if not path.name.startswith(".")]
    assert len(folders) == 1 and report["identity"].startswith(folders[0].name)
    again, again_report = load_or_train(TINY_TRAINING, cache, progress=False)  # a load: no training
    assert again_report == report
    clips, _ = render(10, TEST_VOICES, (130, 190), (30, 70), seed=5)
    assert again.judge(clips) == judge.judge(clips)
    assert torch.equal(again(clips), judge.eval()(clips))
    broken = tmp_path / "broken"
    shutil.copytree(folders[0], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError):
        SpeechJudge.load(broken)


def test_the_checker_hears_a_real_clip_of_the_prompted_word(trained):
    judge, report, _ = trained
    checker = SpeechChecker(judge, report)
    clips = [speak(word, "en-us", 160, 50) for word in WORDS]  # (1, S) each, a voice the speech model trains on
    heard = judge.judge(clips)
    right = [i for i, word in enumerate(WORDS) if heard[i] == word]
    assert len(right) >= 5
    i = right[0]
    assert checker.score([clips[i]], [WORDS[i]]) == {"word": 1.0, "all": 1.0, "judge_accuracy":
                                                     report["held_out_accuracy"], "count": 1}
    assert checker.score([clips[i]], [WORDS[(i + 1) % len(WORDS)]])["word"] == 0.0
    assert checker.score(clips, list(WORDS))["word"] == len(right) / len(WORDS)
    short = [clip[:, :8000] for clip in clips]  # a 0.5 s clip (the tiny recipe's) is padded with silence
    assert len(checker.score(short, list(WORDS))) == 4
    assert "spoken-word judge" in report_markdown(checker.score(clips, list(WORDS)), "speech", "clips")
    assert judge.judge(torch.zeros(2, 1, 16000)) == ["", ""]  # silence is no word, never the prompted one
    assert checker.score([torch.zeros(1, 16000)] * 10, list(WORDS))["word"] == 0.0


def test_the_checker_prompts_and_captions():
    checker = CHECKERS["speech"]
    assert isinstance(checker, SpeechChecker) and checker.attributes == ("word", "all")
    prompts = checker.prompts(25, seed=0)
    assert set(prompts[:10]) == set(WORDS) and prompts[10:20] == prompts[:10] and prompts == checker.prompts(25, 0)
    assert checker.prompts(10, seed=1) != prompts[:10]
    items, truths = checker.caption_items(3, seed=0)
    assert items.shape == (3, 1, 16000) and all(truth in WORDS for truth in truths)
    scores = checker.score_captions([truths[0], f" {truths[1]}\n", "yes please"], truths)
    assert scores["word"] == scores["all"] == 2 / 3 and scores["parsed"] == 2 / 3 and scores["count"] == 3
    with pytest.raises(ValueError, match="captions"):
        checker.score_captions(["yes"], truths)


def test_bad_inputs_are_clear_value_errors(trained):
    judge, report, _ = trained
    checker = SpeechChecker(judge, report)
    for bad in (torch.zeros(2, 2, 16000), torch.zeros(16000), torch.zeros(1, 1, 1, 16000), torch.zeros(2, 0),
                [torch.zeros(2, 16000)], [], ["not a clip"], torch.full((1, 1, 16000), float("nan"))):
        with pytest.raises(ValueError, match="clip|expected"):
            judge.judge(bad)
    with pytest.raises(ValueError, match=r"\(B, 1, 16000\)"):
        judge(torch.zeros(2, 1, 8000))
    with pytest.raises(ValueError, match="outputs for"):
        checker.score([torch.zeros(1, 16000)], ["yes", "no"])
    with pytest.raises(ValueError, match="not words"):
        checker.score([torch.zeros(1, 16000)], ["maybe"])
    assert as_clips([torch.ones(20000), torch.ones(1, 100)], 16000).shape == (2, 1, 16000)


def test_the_figure_script_prints_per_word_accuracy(trained, capsys, tmp_path):
    import json
    import subprocess
    import sys

    from demos.speech_judge_accuracy import main

    _, report, cache = trained
    assert main(["--tiny", "--cache", str(cache), "--num-clips", "10", "--out", str(tmp_path / "figure.json")]) == 0
    printed = capsys.readouterr().out
    assert "| word | held-out voices | the model's voices |" in printed and "| stop |" in printed and "| all |" in printed
    saved = json.loads((tmp_path / "figure.json").read_text())
    assert saved["judge"] == report and set(saved["accuracy"]["held-out voices"]) == {*WORDS, "all"}
    result = subprocess.run([sys.executable, "demos/speech_judge_accuracy.py", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "--num-clips" in result.stdout
