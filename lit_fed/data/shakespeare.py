r"""Tiny Shakespeare grouped by speaker: a natural federated next-character prediction task.

The "tiny Shakespeare" corpus (1,115,394 characters, public domain; ``data/tinyshakespeare/input.txt`` of Karpathy's
char-rnn repository) is a sequence of speeches separated by blank lines, each starting with a ``NAME:`` line. One
speaker is one client — the construction of LEAF's Shakespeare task (Caldas et al. 2018), which FedTP also uses
(Li et al. 2023). Speakers with fewer than ``min_speeches`` speeches are dropped (52 speakers have at least 50).

Samples are fixed-length windows: a window of ``seq_len + 1`` consecutive characters gives the input (its first
``seq_len`` characters) and the target (the next character, i.e. the input shifted by one position ends in the
target). The vocabulary is the sorted set of characters of the whole file (65 for tiny Shakespeare), so every client
and every filtering setting shares one encoding.

Splits (PFLlib's convention, Zhang et al. 2023): each client's speeches are shuffled with ``(seed, "split", client)``
and the first ``round(train_fraction · n)`` (at least one, and at least one left for test) form its train split;
each split's speeches (in their original order, each followed by a newline) are concatenated and cut into windows
every ``stride`` characters — windows never cross from a train speech into a test one. The global test set is the
union of the clients' test splits. Clients are ordered by number of speeches (descending; ties by first appearance),
and ``max_clients`` keeps the first ones.

Getting the file: pass ``path``; otherwise ``$LIT_FED_DATA/tinyshakespeare.txt`` and ``../shared/data/
tinyshakespeare.txt`` (beside the checkout, where CI finds it) are tried, then — only with ``download=True`` —
:data:`TINY_SHAKESPEARE_URL` is fetched to ``$LIT_FED_DATA`` (default ``~/.cache/lit_fed/data``). By hand::

    curl -o tinyshakespeare.txt \
        https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt

Example:
    >>> dm = ShakespeareDataModule(path="tinyshakespeare.txt", seq_len=80, stride=10)  # doctest: +SKIP
    >>> dm.setup(); dm.num_clients, dm.num_classes  # doctest: +SKIP
    (52, 65)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lit_fed.data.batching import sequential_loader, shuffled_loader
from lit_fed.data.datamodule import POOLED_CLIENT_TESTS, FederatedDataModule
from lit_fed.data.datasets import default_data_root
from lit_fed.data.partition_file import PARTITION_FILE_NAME, PartitionFile
from lit_fed.utils.seeding import numpy_rng, torch_generator

__all__ = [
    "TINY_SHAKESPEARE_URL",
    "ShakespeareDataModule",
    "WindowDataset",
    "find_tiny_shakespeare",
    "parse_speeches",
]

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
"""Where the corpus is published (char-rnn)."""

FILE_NAME = "tinyshakespeare.txt"


def find_tiny_shakespeare(path: str | os.PathLike[str] | None = None, download: bool = False) -> Path:
    """Locates the corpus file.

    Tried in order: ``path``; ``$LIT_FED_DATA/tinyshakespeare.txt``; ``../shared/data/tinyshakespeare.txt`` from the
    working directory and from the repository; a download (only if ``download``).

    Raises:
        FileNotFoundError: nothing found; the message says how to get the file.
    """
    if path is not None:
        candidate = Path(path).expanduser()
        if candidate.is_file():
            return candidate
        if not download:
            raise FileNotFoundError(f"tiny Shakespeare not found at {candidate}; {_HOW_TO_GET}")
        return _download(candidate)
    repo = Path(__file__).resolve().parents[2]
    candidates = [
        default_data_root() / FILE_NAME,
        Path.cwd().parent / "shared" / "data" / FILE_NAME,
        repo.parent / "shared" / "data" / FILE_NAME,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if download:
        return _download(default_data_root() / FILE_NAME)
    raise FileNotFoundError(
        f"tiny Shakespeare not found (looked at {', '.join(str(c) for c in candidates)}); {_HOW_TO_GET}"
    )


_HOW_TO_GET = (
    f"pass path=... or download it: curl -o tinyshakespeare.txt {TINY_SHAKESPEARE_URL} (or download=True where a "
    "network exists)"
)


def _download(target: Path) -> Path:
    import urllib.request

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    urllib.request.urlretrieve(TINY_SHAKESPEARE_URL, tmp)  # noqa: S310 - a fixed https URL
    os.replace(tmp, target)
    return target


def parse_speeches(text: str) -> dict[str, list[str]]:
    """Speeches by speaker, in order of first appearance: ``{"ROMEO": ["speech 1 text", ...], ...}``.

    A speech is a blank-line-separated block whose first line is ``NAME:``; its text is the following lines. Blocks
    without such a header are skipped.
    """
    speeches: dict[str, list[str]] = {}
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        header = lines[0].strip()
        if len(lines) < 2 or not header.endswith(":") or len(header) < 2:
            continue
        speeches.setdefault(header[:-1], []).append("\n".join(lines[1:]))
    return speeches


@functools.lru_cache(maxsize=2)
def _read(path: str, mtime: float) -> str:
    return Path(path).read_text(encoding="utf-8")


class WindowDataset(Dataset):
    """Fixed-length windows over one token stream, fetched a whole batch at a time.

    ``dataset[positions]`` returns ``(x, y)``: ``x = tokens[s : s + seq_len]`` and ``y = tokens[s + seq_len]`` for
    each window start ``s = starts[p]``, as ``(B, seq_len)`` and ``(B,)`` int64 tensors.

    Args:
        tokens: ``(N,)`` int64 token ids.
        starts: ``(M,)`` int64 window starts (each ``≤ N − seq_len − 1``).
        seq_len: Input length.
    """

    def __init__(self, tokens: Tensor, starts: Tensor, seq_len: int) -> None:
        self.tokens = tokens
        self.starts = starts
        self.seq_len = seq_len
        self._offsets = torch.arange(seq_len + 1)

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def __getitem__(self, positions: Sequence[int] | Tensor | int) -> tuple[Tensor, Tensor]:
        """``(inputs, next characters)`` of the windows at ``positions``."""
        index = torch.as_tensor(positions, dtype=torch.int64)
        windows = self.tokens[self.starts[index].unsqueeze(-1) + self._offsets]
        return windows[..., :-1], windows[..., -1]


@dataclass(eq=False)
class _Corpus:
    speakers: list[str]
    vocab: list[str]
    tokens: Tensor  # every client's train text, then every client's test text
    train_starts: list[Tensor]
    test_starts: list[Tensor]
    train_speeches: list[int]
    test_speeches: list[int]
    train_ids: list[np.ndarray]  # per client, speech ids (see ShakespeareDataModule.save_partition)
    test_ids: list[np.ndarray]
    num_speeches: int  # speeches of all speakers in the file
    source: str


class ShakespeareDataModule(FederatedDataModule):
    """Tiny Shakespeare by speaker with the federated datamodule's client API (next-character prediction).

    Exposes what :class:`~lit_fed.loop.federated_loop.FederatedLoop` uses — ``num_clients``, ``num_classes`` (the
    vocabulary size), ``client_train_dataloader(cid, round)``, ``client_test_dataloader(cid)``,
    ``global_test_dataloader()``, ``client_num_train_samples``, ``client_label_counts`` (counts of target
    characters), ``partition_histogram``, ``partition_summary``, ``plot_partition`` — and plain-Lightning pooled
    loaders. Batches are ``(x, y)`` with ``x`` of shape ``(B, seq_len)`` and ``y`` of shape ``(B,)`` (int64).

    Args:
        path: The corpus file (see the module docstring for the search order when ``None``).
        seq_len: Characters of input per sample (LEAF: 80).
        stride: Distance between consecutive window starts (1: every position, as LEAF).
        min_speeches: Speakers with fewer speeches are dropped (at least 2: one train and one test speech).
        max_clients: Keep only this many speakers (the ones with most speeches); ``None``: all kept.
        batch_size: Training batch size.
        eval_batch_size: Batch size of the test loaders.
        train_fraction: Share of each speaker's speeches in its train split, ``0 < f < 1``.
        seed: Run seed (the train/test split and batch orders are pure functions of it).
        download: Download the corpus if it is not found (needs a network).

    Raises:
        ValueError: bad arguments; at setup, a client left with no train or test window.
        FileNotFoundError: at setup, the corpus cannot be found.
    """

    def __init__(
        self,
        path: str | None = None,
        seq_len: int = 80,
        stride: int = 1,
        min_speeches: int = 50,
        max_clients: int | None = None,
        batch_size: int = 10,
        eval_batch_size: int = 256,
        train_fraction: float = 0.75,
        seed: int = 0,
        download: bool = False,
    ) -> None:
        L.LightningDataModule.__init__(self)  # not FederatedDataModule.__init__: no image source or partitioner
        for name, value in (
            ("seq_len", seq_len),
            ("stride", stride),
            ("min_speeches", min_speeches),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ShakespeareDataModule: {name} must be an integer >= 1, got {name}={value!r}")
        if min_speeches < 2:
            raise ValueError(
                f"ShakespeareDataModule: min_speeches must be >= 2 (one train and one test speech), got {min_speeches}"
            )
        if max_clients is not None and max_clients < 1:
            raise ValueError(f"ShakespeareDataModule: max_clients must be >= 1 or None, got {max_clients!r}")
        if not 0 < train_fraction < 1:
            raise ValueError(f"ShakespeareDataModule: train_fraction must be in (0, 1), got {train_fraction!r}")
        self.path = path
        self.seq_len = seq_len
        self.stride = stride
        self.min_speeches = min_speeches
        self.max_clients = max_clients
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.train_fraction = float(train_fraction)
        self.seed = seed
        self.download = download
        self._built = None
        self._corpus: _Corpus | None = None

    # -- building ------------------------------------------------------------------------------------------
    @override
    def prepare_data(self) -> None:
        """Locates (and, with ``download``, fetches) the corpus."""
        find_tiny_shakespeare(self.path, self.download)

    @override
    def setup(self, stage: str | None = None) -> None:
        """Parses, filters, splits and windows the corpus (once).

        Raises:
            FileNotFoundError: the corpus cannot be found.
            ValueError: no speaker has ``min_speeches`` speeches, or a client has no train or test window.
        """
        if self._corpus is not None:
            return
        file = find_tiny_shakespeare(self.path, self.download)
        text = _read(str(file), file.stat().st_mtime)
        vocab = sorted(set(text))
        lookup = {ch: i for i, ch in enumerate(vocab)}
        by_speaker = parse_speeches(text)
        order = {name: i for i, name in enumerate(by_speaker)}
        kept = [name for name, speeches in by_speaker.items() if len(speeches) >= self.min_speeches]
        kept.sort(key=lambda name: (-len(by_speaker[name]), order[name]))
        if self.max_clients is not None:
            kept = kept[: self.max_clients]
        if not kept:
            raise ValueError(
                f"ShakespeareDataModule: no speaker has >= {self.min_speeches} speeches in {file}; lower min_speeches"
            )
        offsets, num_speeches = {}, 0  # speech ids: speaker by speaker, in order of first appearance
        for name, speeches in by_speaker.items():
            offsets[name], num_speeches = num_speeches, num_speeches + len(speeches)
        train_texts, test_texts, train_counts, test_counts = [], [], [], []
        all_train_ids, all_test_ids = [], []
        for client, name in enumerate(kept):
            speeches = by_speaker[name]
            permutation = numpy_rng(self.seed, "split", client).permutation(len(speeches))
            n_train = min(max(round(self.train_fraction * len(speeches)), 1), len(speeches) - 1)
            train_ids, test_ids = np.sort(permutation[:n_train]), np.sort(permutation[n_train:])
            train_texts.append("".join(speeches[i] + "\n" for i in train_ids))
            test_texts.append("".join(speeches[i] + "\n" for i in test_ids))
            train_counts.append(int(train_ids.size))
            test_counts.append(int(test_ids.size))
            all_train_ids.append(train_ids.astype(np.int64) + offsets[name])
            all_test_ids.append(test_ids.astype(np.int64) + offsets[name])
        pieces = train_texts + test_texts
        tokens = torch.tensor([lookup[ch] for piece in pieces for ch in piece], dtype=torch.int64)
        offsets = np.cumsum([0] + [len(p) for p in pieces])
        starts = []
        for index, piece in enumerate(pieces):
            windows = len(piece) - self.seq_len
            if windows < 1:
                client = index % len(kept)
                split = "train" if index < len(kept) else "test"
                raise ValueError(
                    f"ShakespeareDataModule: client {client} ({kept[client]!r}) has {len(piece)} {split} characters, "
                    f"fewer than seq_len + 1 = {self.seq_len + 1}; lower seq_len or raise min_speeches"
                )
            starts.append(torch.arange(0, windows, self.stride, dtype=torch.int64) + int(offsets[index]))
        self._corpus = _Corpus(
            speakers=kept,
            vocab=vocab,
            tokens=tokens,
            train_starts=starts[: len(kept)],
            test_starts=starts[len(kept) :],
            train_speeches=train_counts,
            test_speeches=test_counts,
            train_ids=all_train_ids,
            test_ids=all_test_ids,
            num_speeches=num_speeches,
            source=str(file),
        )

    @property
    def corpus(self) -> _Corpus:
        """The setup result (runs :meth:`setup` on first access)."""
        if self._corpus is None:
            self.setup()
        assert self._corpus is not None
        return self._corpus

    # -- shape of the federation ---------------------------------------------------------------------------
    @property
    def num_clients(self) -> int:
        """Number of kept speakers."""
        return len(self.corpus.speakers)

    @property
    def num_classes(self) -> int:
        """Vocabulary size (next-character classes)."""
        return len(self.corpus.vocab)

    @property
    def vocab(self) -> list[str]:
        """The characters, index ``i`` is class ``i``."""
        return list(self.corpus.vocab)

    @property
    def speakers(self) -> list[str]:
        """Speaker name of each client."""
        return list(self.corpus.speakers)

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        """``(seq_len,)``."""
        return (self.seq_len,)

    def encode(self, text: str) -> Tensor:
        """Character ids of ``text`` (every character must be in the vocabulary)."""
        lookup = {ch: i for i, ch in enumerate(self.corpus.vocab)}
        return torch.tensor([lookup[ch] for ch in text], dtype=torch.int64)

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """The text of character ids."""
        vocab = self.corpus.vocab
        return "".join(vocab[int(i)] for i in torch.as_tensor(ids).flatten())

    @override
    def _check_client(self, client_id: int) -> None:
        if not 0 <= client_id < self.num_clients:
            raise IndexError(f"client_id={client_id} out of range for {self.num_clients} clients")

    @override
    def client_indices(self, client_id: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        """``(train_starts, test_starts)``: the client's window starts in the token stream."""
        self._check_client(client_id)
        corpus = self.corpus
        return corpus.train_starts[client_id].numpy(), corpus.test_starts[client_id].numpy()

    @override
    def client_num_train_samples(self, client_id: int) -> int:
        """Train windows of a client."""
        self._check_client(client_id)
        return int(self.corpus.train_starts[client_id].numel())

    @override
    def client_num_test_samples(self, client_id: int) -> int:
        """Test windows of a client."""
        self._check_client(client_id)
        return int(self.corpus.test_starts[client_id].numel())

    def _targets(self, starts: Tensor) -> Tensor:
        return self.corpus.tokens[starts + self.seq_len]

    @override
    def client_label_counts(self, client_id: int) -> Tensor:
        """``(vocab,)`` counts of the next characters of a client's train windows."""
        self._check_client(client_id)
        return torch.bincount(self._targets(self.corpus.train_starts[client_id]), minlength=self.num_classes)

    @property
    @override
    def global_test_name(self) -> str:
        """``"pooled client test splits"``: the global model is evaluated on the union of the clients' test splits."""
        return POOLED_CLIENT_TESTS

    # -- loaders -------------------------------------------------------------------------------------------
    @override
    def _dataset(self, starts: Tensor) -> WindowDataset:  # type: ignore[override]
        return WindowDataset(self.corpus.tokens, starts, self.seq_len)

    @override
    def client_train_dataloader(self, client_id: int, round: int = 0) -> DataLoader:
        """A client's train windows, shuffled by ``torch_generator(seed, "train", round, client_id)``."""
        self._check_client(client_id)
        generator = torch_generator(self.seed, "train", round, client_id)
        dataset = self._dataset(self.corpus.train_starts[client_id])
        return shuffled_loader(dataset, self.batch_size, generator)  # type: ignore[arg-type]

    @override
    def client_test_dataloader(self, client_id: int) -> DataLoader:
        """A client's test windows in order."""
        self._check_client(client_id)
        return sequential_loader(self._dataset(self.corpus.test_starts[client_id]), self.eval_batch_size)  # type: ignore[arg-type]

    @override
    def global_test_dataloader(self) -> DataLoader:
        """The union of the clients' test splits, in order."""
        starts = torch.cat(self.corpus.test_starts)
        return sequential_loader(self._dataset(starts), self.eval_batch_size)  # type: ignore[arg-type]

    @override
    def train_dataloader(self) -> DataLoader:
        """All clients' train windows pooled, shuffled by ``torch_generator(seed, "train", "pooled")``."""
        generator = torch_generator(self.seed, "train", "pooled")
        dataset = self._dataset(torch.cat(self.corpus.train_starts))
        return shuffled_loader(dataset, self.batch_size, generator)  # type: ignore[arg-type]

    # -- inspection ----------------------------------------------------------------------------------------
    @override
    def partition_histogram(self) -> np.ndarray:
        """``(num_clients, vocab)`` counts of next characters in the clients' train splits."""
        return torch.stack([self.client_label_counts(c) for c in range(self.num_clients)]).numpy()

    @override
    def partition_summary(self) -> dict[str, float | int]:
        """Clients, speeches, training windows per client (``*_train_samples``), vocabulary size."""
        corpus = self.corpus
        windows = np.array([s.numel() for s in corpus.train_starts])
        speeches = np.array(corpus.train_speeches) + np.array(corpus.test_speeches)
        return {
            "num_clients": self.num_clients,
            "vocab_size": self.num_classes,
            "min_train_samples": int(windows.min()),
            "mean_train_samples": float(windows.mean()),
            "max_train_samples": int(windows.max()),
            "train_samples": int(sum(s.numel() for s in corpus.train_starts)),
            "test_samples": int(sum(s.numel() for s in corpus.test_starts)),
            "min_speeches": int(speeches.min()),
            "max_speeches": int(speeches.max()),
        }

    @override
    def plot_partition(self, path: str | Path) -> Path:
        """Saves a bar chart of train/test windows per client (speaker) as a PNG."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        corpus = self.corpus
        clients = self.num_clients
        train = [s.numel() for s in corpus.train_starts]
        test = [s.numel() for s in corpus.test_starts]
        figure = Figure(figsize=(max(6.0, 0.3 * clients + 2.0), 4.0))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.bar(np.arange(clients), train, width=0.85, label="train")
        axes.bar(np.arange(clients), test, bottom=train, width=0.85, label="test")
        axes.set_xticks(np.arange(clients), corpus.speakers, rotation=90, fontsize="x-small")
        axes.set_ylabel("windows")
        axes.set_title(f"tiny Shakespeare by speaker: {clients} clients, seq_len {self.seq_len}, stride {self.stride}")
        axes.legend()
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
        return path

    @override
    def save_partition(self, directory: str | Path) -> Path:
        """Writes the speech-level split actually used to ``directory/partition.json``.

        Indices are speech ids: speaker by speaker in order of first appearance in the file
        (:func:`parse_speeches`), each speaker's speeches in file order; ``client_names`` are the speakers. The
        split is a pure function of the corpus, ``min_speeches``/``max_clients``, ``train_fraction`` and ``seed``.

        Returns:
            The written file.
        """
        corpus = self.corpus
        record = PartitionFile(
            source="tiny Shakespeare",
            source_config=corpus.source,
            index_space="speeches, speaker by speaker (parse_speeches order)",
            num_source_samples=corpus.num_speeches,
            seed=int(self.seed),
            train=corpus.train_ids,
            test=corpus.test_ids,
            client_names=list(corpus.speakers),
            metadata={
                "datamodule": type(self).__name__,
                "seq_len": self.seq_len,
                "stride": self.stride,
                "min_speeches": self.min_speeches,
                "max_clients": self.max_clients,
                "train_fraction": self.train_fraction,
                "global_test": POOLED_CLIENT_TESTS,
            },
        )
        return record.write(Path(directory) / PARTITION_FILE_NAME)
