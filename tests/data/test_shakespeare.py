from pathlib import Path

import pytest
import torch

from lit_fed.data import FederatedDataModule, ShakespeareDataModule, parse_speeches

REAL_FILE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"


def write_corpus(path: Path, speeches_per_speaker: dict[str, int], words: int = 12) -> Path:
    """A small corpus in tiny Shakespeare's format: blocks 'NAME:\\nline\\nline' separated by blank lines."""
    blocks = []
    counters = dict.fromkeys(speeches_per_speaker, 0)
    remaining = dict(speeches_per_speaker)
    turn = 0
    while any(remaining.values()):
        for name in speeches_per_speaker:
            if remaining[name]:
                counters[name] += 1
                remaining[name] -= 1
                turn += 1
                line = " ".join(f"{name.lower()}{counters[name]}w{i}" for i in range(words))
                blocks.append(f"{name}:\n{line},\nand turn {turn}.")
    path.write_text("\n\n".join(blocks) + "\n")
    return path


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "tiny.txt", {"ALPHA": 8, "Second Citizen": 4, "GAMMA": 2, "DELTA": 1})


def test_parse_speeches_groups_by_speaker_in_order(corpus):
    speeches = parse_speeches(corpus.read_text())
    assert list(speeches) == ["ALPHA", "Second Citizen", "GAMMA", "DELTA"]
    assert [len(v) for v in speeches.values()] == [8, 4, 2, 1]
    assert speeches["GAMMA"][1].startswith("gamma2w0 ") and not speeches["GAMMA"][1].startswith("GAMMA")
    assert parse_speeches("A:\n\nB:\nhello\n\nno header here\n") == {"B": ["hello"]}  # empty speech skipped


@pytest.mark.parametrize(("threshold", "expected"), [(2, 3), (3, 2), (5, 1)])
def test_speakers_with_few_speeches_are_dropped(corpus, threshold, expected):
    dm = ShakespeareDataModule(path=str(corpus), seq_len=10, stride=3, min_speeches=threshold)
    dm.setup()
    assert dm.num_clients == expected
    assert dm.speakers == ["ALPHA", "Second Citizen", "GAMMA", "DELTA"][:expected]  # most speeches first
    with pytest.raises(ValueError, match="min_speeches"):
        ShakespeareDataModule(path=str(corpus), seq_len=10, min_speeches=9).setup()


def test_windows_and_targets_shift_by_one(corpus):
    dm = ShakespeareDataModule(path=str(corpus), seq_len=10, stride=1, min_speeches=2, batch_size=7)
    dm.setup()
    stream = dm.corpus.tokens
    for cid in range(dm.num_clients):
        train_starts, _ = dm.client_indices(cid)
        x, y = dm._dataset(torch.as_tensor(train_starts))[list(range(len(train_starts)))]
        assert x.shape == (len(train_starts), 10) and y.shape == (len(train_starts),)
        for i, start in enumerate(train_starts):
            assert torch.equal(x[i], stream[start : start + 10]) and int(y[i]) == int(stream[start + 10])
        # consecutive windows (stride 1): the next input is this input shifted by one, ending in this target
        assert torch.equal(x[1:, :-1], x[:-1, 1:]) and torch.equal(x[1:, -1], y[:-1])
        assert dm.decode(x[0])[1:] + dm.decode(y[:1]) == dm.decode(x[1])
    for x, y in dm.client_train_dataloader(0, round=3):
        assert x.dtype == torch.int64 and x.shape[1] == 10 and y.shape == (x.shape[0],)


def test_vocabulary_is_the_files_characters_and_consistent(corpus):
    text = corpus.read_text()
    a = ShakespeareDataModule(path=str(corpus), seq_len=10, min_speeches=2)
    b = ShakespeareDataModule(path=str(corpus), seq_len=10, min_speeches=4)
    assert a.vocab == b.vocab == sorted(set(text)) and a.num_classes == len(set(text))
    assert a.decode(a.encode("alpha3w1, and")) == "alpha3w1, and"
    assert a.encode(":").item() == b.encode(":").item()
    counts = a.client_label_counts(0)
    assert counts.shape == (a.num_classes,) and int(counts.sum()) == a.client_num_train_samples(0)


def test_speech_level_75_25_split_and_global_test_set(corpus):
    dm = ShakespeareDataModule(path=str(corpus), seq_len=10, stride=2, min_speeches=2, seed=3)
    dm.setup()
    assert dm.corpus.train_speeches == [6, 3, 1] and dm.corpus.test_speeches == [2, 1, 1]
    for cid in range(dm.num_clients):  # the train and test texts hold disjoint speeches
        train, test = dm.client_indices(cid)
        train_text = dm.decode(dm.corpus.tokens[int(train[0]) : int(train[-1]) + 11])
        test_text = dm.decode(dm.corpus.tokens[int(test[0]) : int(test[-1]) + 11])
        train_words = {w for w in train_text.split() if "w" in w}
        test_words = {w for w in test_text.split() if "w" in w}
        assert (
            train_words
            and test_words
            and not {w.split("w")[0] for w in train_words} & {w.split("w")[0] for w in test_words}
        )
    total_test = sum(dm.client_num_test_samples(c) for c in range(dm.num_clients))
    assert sum(len(y) for _, y in dm.global_test_dataloader()) == total_test
    again = ShakespeareDataModule(path=str(corpus), seq_len=10, stride=2, min_speeches=2, seed=3)
    assert [dm.client_indices(c)[0].tolist() for c in range(3)] == [
        again.client_indices(c)[0].tolist() for c in range(3)
    ]
    assert isinstance(dm, FederatedDataModule)
    assert dm.partition_histogram().shape == (3, dm.num_classes)
    assert dm.partition_summary()["num_clients"] == 3


def test_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="curl"):
        ShakespeareDataModule(path=str(tmp_path / "nope.txt")).setup()
    with pytest.raises(ValueError, match="seq_len"):
        ShakespeareDataModule(path=str(tmp_path / "nope.txt"), seq_len=0)
    with pytest.raises(ValueError, match="min_speeches"):
        ShakespeareDataModule(path=str(tmp_path / "nope.txt"), min_speeches=1)


@pytest.mark.skipif(not REAL_FILE.is_file(), reason="tiny Shakespeare not found beside the checkout")
def test_real_corpus_has_52_speakers_with_50_speeches():
    dm = ShakespeareDataModule(path=str(REAL_FILE), seq_len=80, stride=50, min_speeches=50)
    dm.setup()
    assert dm.num_clients == 52 and dm.num_classes == 65
    assert dm.speakers[0] == "GLOUCESTER"


def test_global_test_is_the_pooled_client_test_splits(corpus):
    dm = ShakespeareDataModule(path=str(corpus), seq_len=10, stride=2, min_speeches=2)
    assert dm.global_test_name == "pooled client test splits"


def test_save_partition_writes_the_speech_split(corpus, tmp_path):
    from lit_fed.data import read_partition

    dm = ShakespeareDataModule(path=str(corpus), seq_len=10, stride=2, min_speeches=2, seed=4)
    record = read_partition(dm.save_partition(tmp_path / "run"))
    assert record.client_names == ["ALPHA", "Second Citizen", "GAMMA"]
    assert (record.num_source_samples, record.seed, record.source_config) == (15, 4, str(corpus))
    speeches = parse_speeches(corpus.read_text())
    flat = [speech for name in speeches for speech in speeches[name]]  # the file's speech ids
    for client, (offset, count) in enumerate([(0, 8), (8, 4), (12, 2)]):
        train, test = record.train[client], record.test[client]
        assert sorted(train.tolist() + test.tolist()) == list(range(offset, offset + count))
        expected_text = "".join(flat[i] + "\n" for i in train)
        train_starts, _ = dm.client_indices(client)
        first_window = dm.decode(dm.corpus.tokens[train_starts[0] : train_starts[0] + 10])
        assert expected_text.startswith(first_window)
