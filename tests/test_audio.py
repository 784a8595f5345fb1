"""Audio: the RVQ codec (levels trade bitrate for quality), the procedural notes and their checker,
the audio folder source (resampling, mono mix, cut/pad, bad files), WAV round trips."""

import json
import logging

import numpy as np
import pytest
import torch

from mmar.data.audio_folder import AudioFolder, load_audio
from mmar.data.notes import NOTES, RHYTHMS, TIMBRES, NotesDataset, all_captions, parse_caption, render
from mmar.evaluation import CHECKERS
from mmar.evaluation.notes_checker import check, describe
from tokenizers_vq.audio_codec import AudioCodec, AudioCodecConfig


# --- codec -------------------------------------------------------------------------------------
def test_codec_shapes_bitrate_and_bad_input():
    codec = AudioCodec(AudioCodecConfig(base_channels=4, max_channels=8, dilations=(1,), latent_dim=8,
                                        codebook_size=16, num_codebooks=3)).eval()
    assert codec.hop_length == 320 and codec.frame_rate == 50
    assert codec.bitrate() == 50 * 3 * 4 and codec.bitrate(1) == 50 * 4
    assert codec.token_shape((1, 16000)) == (50, 1, 1)
    audio = torch.zeros(2, 1, 3200)  # (B, 1, S)
    codes = codec.encode(audio)
    assert codes.shape == (2, 10, 1, 1, 3) and codes.dtype == torch.long
    assert codec.decode(codes[..., :1]).shape == (2, 1, 3200)  # fewer levels decode too
    with pytest.raises(ValueError, match="multiple of 320"):
        codec.encode(torch.zeros(1, 1, 1000))
    with pytest.raises(ValueError, match=r"\(1, S\) mono"):
        codec.token_shape((2, 3200))
    with pytest.raises(ValueError, match="codes must lie"):
        codec.decode(torch.full((1, 10, 1, 1, 3), 16))
    with pytest.raises(ValueError, match="levels 1..3"):
        codec.decode(torch.zeros(1, 10, 1, 1, 4, dtype=torch.long))


def test_reconstruction_improves_with_every_level():
    """A tiny codec trained briefly on notes: on held-out clips every residual level brings the
    quantised latents closer to the encoder's (1 < 2 < 4 levels). Waveform quality per level is
    the codec report's "levels" figure; a codec trained for seconds does not decode well yet."""
    from einops import rearrange

    torch.manual_seed(0)
    codec = AudioCodec(AudioCodecConfig(base_channels=4, max_channels=16, dilations=(1,), latent_dim=8,
                                        codebook_size=16, num_codebooks=4, dead_code_steps=5))
    train = NotesDataset(32, seconds=0.5, seed=1)
    clips = torch.stack([train[i][0] for i in range(len(train))])  # (32, 1, 8000)
    optimizer = torch.optim.Adam(codec.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(20):
        batch = clips[torch.randint(len(clips), (8,), generator=generator)]  # (8, 1, 8000)
        loss = codec.training_loss(batch, generator).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    codec.eval()
    held_out = NotesDataset(16, seconds=0.5, seed=2)
    audio = torch.stack([held_out[i][0] for i in range(len(held_out))])  # (16, 1, 8000)
    with torch.no_grad():
        codes = codec.encode(audio)  # (16, 25, 1, 1, 4)
        latents = rearrange(codec.encoder(audio), "b d t -> b t d")  # (16, 25, 8)
        errors = [float((latents - codec.quantizer.decode(codes[:, :, 0, 0, :q])).pow(2).mean()) for q in (1, 2, 4)]
        decoded = [codec.decode(codes[..., :q]) for q in (1, 2, 4)]  # (16, 1, 8000) each
    assert errors[0] > errors[1] > errors[2], errors
    assert all(d.shape == audio.shape and torch.isfinite(d).all() for d in decoded)
    assert not torch.equal(decoded[0], decoded[2])  # the extra levels reach the waveform


def test_reconstruction_report_has_every_level():
    from mmar.evaluation.reconstruction import reconstruction_grid, reconstruction_metrics

    codec = AudioCodec(AudioCodecConfig(base_channels=4, max_channels=8, dilations=(1,), latent_dim=8,
                                        codebook_size=16, num_codebooks=4)).eval()
    audio = torch.stack([NotesDataset(3, seconds=0.5)[i][0] for i in range(3)])  # (3, 1, 8000)
    report = reconstruction_metrics(codec, audio)
    assert set(report["levels"]) == {"1", "2", "4"} and report["bitrate"] == 50 * 4 * 4
    assert report["levels"]["2"]["bitrate"] == 400 and report["num_clips"] == 3
    assert reconstruction_grid(codec, audio).mode == "RGB"


# --- procedural notes and the checker ------------------------------------------------------------
def test_captions_follow_the_grammar_and_items_are_deterministic():
    assert len(all_captions()) == len(TIMBRES) * len(NOTES) * len(RHYTHMS) == 84
    assert parse_caption("a pluck playing E4 four times") == ("pluck", "E4", "four times")
    for bad in ("a pluck playing E4", "a violin playing E4 once", "a sine playing C5 once", "a sine playing C4 twice"):
        with pytest.raises(ValueError, match="not a notes caption"):
            parse_caption(bad)
    dataset = NotesDataset(5, seconds=1.0, seed=3)
    audio, text = dataset[2]
    assert audio.shape == (1, 16000) and audio.abs().max() <= 1 and parse_caption(text)
    again, same = NotesDataset(5, seconds=1.0, seed=3)[2]
    assert torch.equal(audio, again) and text == same
    assert not torch.equal(audio, NotesDataset(5, seconds=1.0, seed=4)[2][0])


def test_checker_agrees_with_the_captions():
    """The full measurement (2,000 clips) is demos/check_notes_checker.py; here 100 clips."""
    dataset = NotesDataset(100, seed=7)
    agree = sum(check(audio, *parse_caption(text)[1:])["all"] for audio, text in (dataset[i] for i in range(100)))
    assert agree / 100 >= 0.99


def test_checker_catches_wrong_pitch_rhythm_and_silence():
    clip = render("square", "E4", "rising")
    found = describe(clip)
    assert found.note == "E4" and found.rhythm == "rising" and found.num_onsets == 4
    assert found.pitches == (64, 68, 71, 76)
    assert check(clip, "F4", "rising") == {"pitch": False, "rhythm": True, "all": False}
    assert check(clip, "E4", "four times") == {"pitch": True, "rhythm": False, "all": False}
    assert check(render("sine", "A4", "once"), "A4", "once")["all"]
    assert describe(torch.zeros(1, 16000)) == (None, None, 0, ())
    noise = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0)) * 0.3
    assert not check(noise, "C4", "once")["all"]


def test_notes_checker_scores_prompts_and_captions():
    checker = CHECKERS["notes"]
    prompts = checker.prompts(6, seed=0)
    assert len(set(prompts)) == 6 and all(parse_caption(p) for p in prompts)
    clips = [render(*parse_caption(p)) for p in prompts]
    assert checker.score(clips, prompts)["all"] == 1.0
    assert checker.score(clips[::-1], prompts)["all"] < 1.0
    items, truths = checker.caption_items(3, seed=0)
    assert items.shape == (3, 1, 16000)
    scores = checker.score_captions([truths[0], "gibberish", truths[2].replace("playing", "playing")], truths)
    assert scores["all"] == pytest.approx(2 / 3) and scores["parsed"] == pytest.approx(2 / 3)


# --- the audio folder source ----------------------------------------------------------------------
def _write(path, samples: np.ndarray, rate: int, **options) -> None:
    import soundfile

    soundfile.write(path, samples, rate, **options)


def test_audio_folder_resamples_mixes_cuts_and_pads(tmp_path):
    seconds = np.arange(8000) / 8000
    stereo = np.stack([np.sin(2 * np.pi * 440 * seconds), np.zeros(8000)], axis=1).astype(np.float32) * 0.5
    _write(tmp_path / "long.flac", stereo, 8000)  # 1 s stereo at 8 kHz
    _write(tmp_path / "short.ogg", stereo[:2000, :1], 8000, format="OGG", subtype="VORBIS")  # 0.25 s mono
    _write(tmp_path / "exact.wav", np.full((8000, 1), 0.25, dtype=np.float32), 16000, subtype="PCM_16")
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": n, "text": n}) for n in
                                                       ("long.flac", "short.ogg", "exact.wav")) + "\n")
    folder = AudioFolder(tmp_path, seconds=0.5, sample_rate=16000)
    assert len(folder) == 3 and folder.num_skipped == 0
    long, text = folder[0]
    assert text == "long.flac" and long.shape == (1, 8000)
    assert abs(float(long.abs().max()) - 0.25) < 0.02  # mono mix of a 0.5 sine and silence
    spectrum = torch.fft.rfft(long[0]).abs()  # (4001,) 2 Hz per bin at 16 kHz over 0.5 s
    assert abs(int(spectrum.argmax()) * 2 - 440) <= 2  # resampling kept the pitch
    short = folder[1][0]
    assert short.shape == (1, 8000) and short[0, 4200:].abs().max() == 0  # padded with silence after 0.25 s
    exact = folder[2][0]
    assert torch.allclose(exact, torch.full((1, 8000), 0.25), atol=1 / 32767)


def test_audio_folder_skips_bad_files_with_one_warning(tmp_path, caplog):
    _write(tmp_path / "good.wav", np.zeros((3200, 1), dtype=np.float32), 16000, subtype="PCM_16")
    (tmp_path / "noise.wav").write_bytes(b"RIFF....WAVEfmt this is not audio")
    (tmp_path / "empty.flac").write_bytes(b"")
    (tmp_path / "picture.png").write_bytes(b"\x89PNG\r\n")
    lines = [{"file_name": "good.wav", "text": "quiet"}, {"file_name": "noise.wav", "text": "broken"},
             {"file_name": "empty.flac", "text": "nothing"}, {"file_name": "picture.png", "text": "not a sound"},
             {"file_name": "missing.ogg", "text": "gone"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n{oops\n")
    with caplog.at_level(logging.WARNING):
        folder = AudioFolder(tmp_path, seconds=0.2)
    assert len(folder) == 1 and folder.num_skipped == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 5" in warnings[0] and "noise.wav" in warnings[0] and "\n" not in warnings[0]


def test_audio_folder_of_only_bad_files_is_a_clear_error(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"garbage")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.wav", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"no usable \(audio, caption\) pair .*1 skipped") as error:
        AudioFolder(tmp_path)
    assert "\n" not in str(error.value)
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        AudioFolder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="a.wav"):
        load_audio(tmp_path / "a.wav", 16000, 100)


def test_a_generated_clip_round_trips_through_wav_bit_exactly(tmp_path):
    import soundfile

    from mmar import media

    clip = render("sawtooth", "G4", "four times")  # (1, 16000)
    path = media.save_media("audio", clip, tmp_path / "clip.wav", sample_rate=16000)
    back, rate = soundfile.read(path, dtype="int16", always_2d=True)  # (S, 1)
    assert rate == 16000 and np.array_equal(back[:, 0], media.pcm16(clip)[:, 0])
    reread = load_audio(path, 16000, 16000)  # through the folder source's reader
    assert torch.allclose(reread, clip, atol=1 / 32767 + 1e-7)


# --- speech (espeak-ng, installed by `make test`) ---------------------------------------------------
def test_speech_says_its_caption_deterministically():
    from mmar.data.speech import HELD_OUT_VOICES, VOICES, WORDS, SpeechDataset

    dataset = SpeechDataset(4, seconds=1.0, seed=0)
    audio, text = dataset[1]
    assert audio.shape == (1, 16000) and text in WORDS and float(audio.abs().max()) > 0.05
    assert torch.equal(SpeechDataset(4, seconds=1.0, seed=0)[1][0], audio)  # espeak-ng is deterministic
    assert not set(HELD_OUT_VOICES) & set(VOICES)
    other = SpeechDataset(2, words=("stop",), voices=(HELD_OUT_VOICES[0],))
    assert other[0][1] == "stop" and not torch.equal(other[0][0], SpeechDataset(2, words=("go",))[0][0])


def test_speech_without_espeak_is_one_line_naming_the_package(monkeypatch):
    import shutil

    from mmar.data.speech import SpeechDataset

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install -y espeak-ng") as error:
        SpeechDataset(2)
    assert "\n" not in str(error.value)
