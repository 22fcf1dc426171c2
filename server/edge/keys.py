"""Edge cache keys: what makes two Recommend answers interchangeable.

A key covers the key version, the model version, the user id, the user's version, the normalised request,
a time bucket and the experiment variants serving the user (so variants never share a cached answer).
Normalising first (sorting maps and lists, dropping duplicate values, spelling out the
default k) makes requests that mean the same thing share one entry whatever order the caller wrote them in.
All components go through one digest as an unambiguous JSON list, so an id containing a separator can
never make two different requests collide; the readable prefix is only there for operators.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from dataclasses import dataclass

from server.api import convert
from server.gen.recd.v1 import recommender_pb2
from server.requests import Canonical, canonical

Normal = Canonical


def normalise(request: recommender_pb2.RecommendRequest) -> Normal:
    """The request minus the user id, in the canonical form the frontend uses too (server.requests)."""
    return canonical(convert.recommend_query(request))


def time_bucket(now_s: float, user_id: str, width_s: float) -> int:
    """The bucket `now_s` falls in for this user; 0 when bucketing is off.

    Each user's buckets start at their own phase (a stable hash of the id), so the keys of all users do
    not roll over in the same second and send a wave of misses to the origins.
    """
    if width_s <= 0:
        return 0
    phase = (zlib.crc32(user_id.encode()) / 2**32) * width_s
    return int((now_s + phase) // width_s)


@dataclass(frozen=True, slots=True)
class KeyParts:
    key_version: str
    model_version: str
    user_id: str
    user_version: str
    request: Normal
    bucket: int
    arm: str = ""  # the experiment variants serving the user (server.experiments Arm.tag)

    def key(self) -> str:
        blob = json.dumps(
            [
                self.key_version,
                self.model_version,
                self.user_id,
                self.user_version,
                self.bucket,
                self.request,
                self.arm,
            ],
            separators=(",", ":"),
        ).encode()
        digest = hashlib.blake2b(blob, digest_size=16).hexdigest()
        return user_key_prefix(self.key_version, self.user_id) + digest

    def served_by(self, model_version: str, arm: str) -> KeyParts:
        """The same lookup under another model version and variants: where an origin answer they served
        belongs."""
        return dataclasses.replace(self, model_version=model_version, arm=arm)


def user_key_prefix(key_version: str, user_id: str) -> str:
    """What every key of this user's answers starts with (then a hex digest)."""
    return f"edge:{key_version}:{user_id}:"


def key_of_user(key: str, prefix: str) -> bool:
    """Whether `key` belongs to the user of `prefix` (user_key_prefix): the rest is the digest alone, so
    user "a" does not claim the keys of user "a:b"."""
    return key.startswith(prefix) and ":" not in key[len(prefix) :]


def user_version_key(user_id: str) -> str:
    return f"edge:uv:{user_id}"
