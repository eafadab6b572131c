"""Transparency-log math and formats: pure functions, no I/O (design.md, "The audit log").

- Merkle trees with RFC 6962/9162 hashing: leaf = sha256(0x00 || entry),
  node = sha256(0x01 || left || right); the tree head of any size, inclusion and
  consistency proofs (RFC 9162 §2.1.3, §2.1.4) and their checks.
- C2SP `tlog-tiles`: tiles of 256 hashes at levels 0, 1, 2, … (a level-L hash is the root of
  256^L leaves), their paths (`tile/<L>/x001/234`, partial `.p/<W>`), and entry bundles
  (`tile/entries/<N>`: each entry as a big-endian uint16 length and its bytes).
- C2SP `tlog-checkpoint` bodies in C2SP `signed-note` envelopes, signed with Ed25519; keys in
  the note formats of golang.org/x/mod/sumdb/note (`name+hash+base64`), so that Go's
  `note.NewVerifier` and `tlog.CheckRecord`/`CheckTree` check what this module writes.
- C2SP `tlog-proof`: an inclusion proof with its checkpoint, for offline checks.

Hashes are 32 raw bytes here; callers give `hash_at(level, index)`, the stored hash of the
complete subtree of 2^level leaves starting at leaf index * 2^level. cryptography is imported
where a note is signed or checked: appending to a log without a key loads none of it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rebuild.errors import ClaimFailed, SigningError

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # 256 hashes (or entries) in a full tile
HASH_SIZE = 32
ALG_ED25519 = 0x01  # the signed-note algorithm byte of an Ed25519 key
PROOF_HEADER = "c2sp.org/tlog-proof@v1"

HashAt = Callable[[int, int], bytes]


class ProofFailed(ClaimFailed):
    """A proof, a checkpoint or a note does not check out."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def empty_root() -> bytes:
    return hashlib.sha256(b"").digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1): where RFC 6962 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


def merkle_root(hashes: Sequence[bytes]) -> bytes:
    """The RFC 6962 tree head over a list of leaf (or aligned subtree) hashes."""
    if not hashes:
        return empty_root()
    level = list(hashes)
    # Bottom-up pairing gives the same head as the recursive definition: an odd last
    # node is carried up unchanged, exactly as the largest-power-of-two split implies.
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


# -- trees over stored hashes ---------------------------------------------------------------


def subtree_hash(hash_at: HashAt, start: int, end: int) -> bytes:
    """The RFC 6962 head of leaves [start, end) (start aligned as RFC 6962 subtrees are)."""
    size = end - start
    if size <= 0:
        raise ValueError("empty range")
    if size & (size - 1) == 0 and start % size == 0:
        return hash_at(size.bit_length() - 1, start // size)
    k = _split(size)
    return node_hash(subtree_hash(hash_at, start, start + k), subtree_hash(hash_at, start + k, end))


def tree_hash(hash_at: HashAt, size: int) -> bytes:
    return empty_root() if size == 0 else subtree_hash(hash_at, 0, size)


def inclusion_proof(hash_at: HashAt, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1."""
    if not 0 <= index < size:
        raise ValueError(f"entry {index} is not in a tree of {size}")

    def path(m: int, start: int, end: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*path(m, start, start + k), subtree_hash(hash_at, start + k, end)]
        return [*path(m - k, start + k, end), subtree_hash(hash_at, start, start + k)]

    return path(index, 0, size)


def consistency_proof(hash_at: HashAt, old: int, new: int) -> list[bytes]:
    """PROOF(old, D[0:new]) of RFC 9162 §2.1.4.1."""
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from {old} to {new}")
    if old in (0, new):
        return []

    def sub(m: int, start: int, end: int, whole: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if whole else [subtree_hash(hash_at, start, end)]
        k = _split(n)
        if m <= k:
            return [*sub(m, start, start + k, whole), subtree_hash(hash_at, start + k, end)]
        return [*sub(m - k, start + k, end, False), subtree_hash(hash_at, start, start + k)]

    return sub(old, 0, new, True)


def check_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                    root: bytes) -> None:
    """RFC 9162 §2.1.3.2; raises ProofFailed."""
    if not 0 <= index < size:
        raise ProofFailed(f"entry {index} cannot be in a tree of {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofFailed(f"inclusion proof of entry {index} is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != root:
        raise ProofFailed(f"entry {index} is not in the tree of {size} entries with root "
                          f"{b64(root)}")


def check_consistency(old: int, old_root: bytes, new: int, new_root: bytes,
                      proof: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2; raises ProofFailed."""
    fail = ProofFailed(f"the tree of {new} entries does not extend the tree of {old} entries "
                       f"with root {b64(old_root)}: the log was rewritten")
    if not 0 <= old <= new:
        raise fail
    if old == new:
        if proof or old_root != new_root:
            raise fail
        return
    if old == 0:
        if proof:
            raise fail
        return
    path = list(proof)
    if old & (old - 1) == 0:
        path.insert(0, old_root)
    if not path:
        raise fail
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise fail
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if fr != old_root or sr != new_root or sn != 0:
        raise fail


# -- tiles ----------------------------------------------------------------------------------


def tile_index_path(n: int) -> str:
    """C2SP tlog-tiles: N in groups of three digits, all but the last prefixed `x`."""
    if n < 0:
        raise ValueError("negative tile index")
    groups = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        groups.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(groups))


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """`tile/<L>/<N>[.p/<W>]`; level -1 names the entry bundles (`tile/entries/<N>`)."""
    head = "tile/entries" if level < 0 else f"tile/{level}"
    tail = "" if width == TILE_WIDTH else f".p/{width}"
    return f"{head}/{tile_index_path(index)}{tail}"


def tile_widths(size: int, level: int) -> tuple[int, int]:
    """(full tiles, width of the partial tile) at `level` (-1: entry bundles) of a tree."""
    count = size >> (TILE_HEIGHT * max(level, 0))
    return count // TILE_WIDTH, count % TILE_WIDTH


def split_hashes(data: bytes) -> list[bytes]:
    if len(data) % HASH_SIZE:
        raise ValueError("a tile is a whole number of 32-byte hashes")
    return [data[i:i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def encode_bundle(entries: Sequence[bytes]) -> bytes:
    out = bytearray()
    for entry in entries:
        if len(entry) > 0xFFFF:
            raise ValueError("an entry holds at most 65535 bytes")
        out += struct.pack(">H", len(entry)) + entry
    return bytes(out)


def decode_bundle(data: bytes) -> list[bytes]:
    entries, i = [], 0
    while i < len(data):
        if i + 2 > len(data):
            raise ValueError("truncated entry bundle")
        (n,) = struct.unpack(">H", data[i:i + 2])
        if i + 2 + n > len(data):
            raise ValueError("truncated entry bundle")
        entries.append(data[i + 2:i + 2 + n])
        i += 2 + n
    return entries


def level_hash_from_tiles(read_tile: Callable[[int, int], list[bytes]], level: int,
                          index: int) -> bytes:
    """hash_at over tiles: a hash at tree level `level` is read from tile level level // 8
    directly when level is a multiple of 8, and otherwise computed from the 2^(level % 8)
    hashes below it, which lie in one tile. `read_tile(L, N)` returns that tile's hashes."""
    tile_level, rest = divmod(level, TILE_HEIGHT)
    span = 1 << rest
    first = index * span
    tile = read_tile(tile_level, first // TILE_WIDTH)
    offset = first % TILE_WIDTH
    hashes = tile[offset:offset + span]
    if len(hashes) != span:
        raise ProofFailed(f"tile {tile_path(tile_level, first // TILE_WIDTH)} is too short")
    return merkle_root(hashes)


# -- notes and checkpoints ------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProofFailed(f"{what} is not valid base64") from None


def key_hash(name: str, public_key: bytes) -> int:
    """signed-note: the first 4 bytes of sha256(name || 0x0A || 0x01 || public key)."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _check_key_name(name: str) -> None:
    if not name or any(c in name for c in "+ \n\t") or not name.isprintable():
        raise SigningError(f"log key name {name!r}: use a name without spaces or '+', e.g. "
                           "example.com/rebuild-log")


@dataclass(frozen=True)
class NoteVerifier:
    name: str
    key_id: int
    public_key: bytes  # 32 bytes, Ed25519

    def to_text(self) -> str:
        return f"{self.name}+{self.key_id:08x}+{b64(bytes([ALG_ED25519]) + self.public_key)}"

    @classmethod
    def parse(cls, text: str) -> NoteVerifier:
        """A note verifier key `name+hash+base64(0x01 || key)` (x/mod/sumdb/note)."""
        parts = text.strip().split("+", 2)  # base64 may hold '+'
        if len(parts) != 3 or len(parts[1]) != 8:
            raise SigningError("not a log verifier key: expected NAME+HASH+KEY (as `rebuild "
                               "log keygen` writes to PREFIX.pub)")
        name, hexid, data = parts
        try:
            key_id = int(hexid, 16)
            raw = base64.b64decode(data, validate=True)
        except (ValueError, binascii.Error):
            raise SigningError("log verifier key: bad hash or base64") from None
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise SigningError("log verifier key: not an Ed25519 key")
        if key_hash(name, raw[1:]) != key_id:
            raise SigningError(f"log verifier key {name}: its hash does not match the key")
        return cls(name, key_id, raw[1:])


@dataclass(frozen=True)
class NoteSigner:
    name: str
    seed: bytes  # 32 bytes, the Ed25519 private key

    @property
    def verifier(self) -> NoteVerifier:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        public = Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw)
        return NoteVerifier(self.name, key_hash(self.name, public), public)

    def to_text(self) -> str:
        key = b64(bytes([ALG_ED25519]) + self.seed)
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id:08x}+{key}"

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        _check_key_name(name)
        return cls(name, Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def parse(cls, text: str) -> NoteSigner:
        """A note signer key `PRIVATE+KEY+name+hash+base64(0x01 || seed)` (x/mod/sumdb/note)."""
        parts = text.strip().split("+", 4)  # base64 may hold '+'
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise SigningError("not a log signing key: expected PRIVATE+KEY+NAME+HASH+KEY (as "
                               "`rebuild log keygen` writes to PREFIX.key)")
        try:
            raw = base64.b64decode(parts[4], validate=True)
        except (ValueError, binascii.Error):
            raise SigningError("log signing key: bad base64") from None
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise SigningError("log signing key: not an Ed25519 key")
        signer = cls(parts[2], raw[1:])
        if f"{signer.verifier.key_id:08x}" != parts[3]:
            raise SigningError(f"log signing key {parts[2]}: its hash does not match the key")
        return signer


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def body(self) -> bytes:
        return f"{self.origin}\n{self.size}\n{b64(self.root)}\n".encode()


@dataclass(frozen=True)
class SignedNote:
    text: bytes  # the checkpoint body, ending in a newline
    signatures: tuple[tuple[str, bytes], ...]  # (key name, 4-byte key hash || signature)

    def to_bytes(self) -> bytes:
        lines = "".join(f"\u2014 {name} {b64(sig)}\n" for name, sig in self.signatures)
        return self.text + b"\n" + lines.encode()


def sign_note(text: bytes, signer: NoteSigner) -> bytes:
    """A C2SP signed note: the text, a blank line, one `— name base64(hash||sig)` line."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signature = Ed25519PrivateKey.from_private_bytes(signer.seed).sign(text)
    hash4 = signer.verifier.key_id.to_bytes(4, "big")
    return SignedNote(text, ((signer.name, hash4 + signature),)).to_bytes()


def parse_note(data: bytes) -> SignedNote:
    """Split a signed note into its text and signature lines (unsigned: no lines)."""
    try:
        data.decode()
    except UnicodeDecodeError:
        raise ProofFailed("the checkpoint is not UTF-8") from None
    split = data.rfind(b"\n\n")
    if split < 0:
        raise ProofFailed("the checkpoint is not a note: no blank line before signatures")
    text, sigs = data[:split + 1], data[split + 2:]
    signatures = []
    for line in sigs.decode().splitlines():
        if not line.startswith("\u2014 "):
            raise ProofFailed(f"the checkpoint has a malformed signature line {line!r}")
        try:
            _, name, sig = line.split(" ")
        except ValueError:
            raise ProofFailed(f"the checkpoint has a malformed signature line {line!r}") from None
        raw = _unb64(sig, "a checkpoint signature")
        if len(raw) < 5:
            raise ProofFailed("a checkpoint signature is too short")
        signatures.append((name, raw))
    if sigs and not sigs.endswith(b"\n"):
        raise ProofFailed("the checkpoint's signatures do not end in a newline")
    return SignedNote(text, tuple(signatures))


def verify_note(note: SignedNote, verifier: NoteVerifier) -> None:
    """Raise ProofFailed unless `verifier` signed the note."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    hash4 = verifier.key_id.to_bytes(4, "big")
    for name, raw in note.signatures:
        if name == verifier.name and raw[:4] == hash4:
            try:
                Ed25519PublicKey.from_public_bytes(verifier.public_key).verify(raw[4:], note.text)
            except InvalidSignature:
                raise ProofFailed(f"the checkpoint's signature by {name} is invalid") from None
            return
    raise ProofFailed(f"the checkpoint is not signed by the log key {verifier.name}+"
                      f"{verifier.key_id:08x}")


def parse_checkpoint(text: bytes) -> Checkpoint:
    """C2SP tlog-checkpoint: origin, decimal size, base64 root; extension lines ignored."""
    lines = text.decode().split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise ProofFailed("the checkpoint body needs an origin, a size and a root hash")
    origin, size, root = lines[:3]
    if not origin or not size.isdigit() or (size != "0" and size.startswith("0")):
        raise ProofFailed("the checkpoint's origin or size is malformed")
    raw = _unb64(root, "the checkpoint's root hash")
    if len(raw) != HASH_SIZE:
        raise ProofFailed("the checkpoint's root hash is not 32 bytes")
    return Checkpoint(origin, int(size), raw)


# -- tlog-proof -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InclusionProof:
    index: int
    hashes: tuple[bytes, ...]
    checkpoint: bytes  # the signed note

    def to_bytes(self) -> bytes:
        """C2SP tlog-proof: header, `index N`, one base64 hash a line, blank line, note."""
        lines = [PROOF_HEADER, f"index {self.index}", *(b64(h) for h in self.hashes)]
        return ("\n".join(lines) + "\n\n").encode() + self.checkpoint

    @classmethod
    def parse(cls, data: bytes) -> InclusionProof:
        head, sep, note = data.partition(b"\n\n")
        lines = head.decode(errors="replace").split("\n")
        if not sep or lines[0] != PROOF_HEADER or len(lines) < 2 or \
                not lines[1].startswith("index ") or not lines[1][6:].isdigit():
            raise ProofFailed(f"not a {PROOF_HEADER} proof")
        hashes = tuple(_unb64(line, "a proof hash") for line in lines[2:])
        if any(len(h) != HASH_SIZE for h in hashes):
            raise ProofFailed("a proof hash is not 32 bytes")
        return cls(int(lines[1][6:]), hashes, note)
