"""The few etcd v3 calls ownership needs, through etcd3gw (etcd's JSON gateway), over several
endpoints. Blocking: the coordinator runs each call in a worker thread.

Why etcd3gw: it is maintained (OpenStack uses it), pure Python, and speaks the JSON gateway
that etcd 3.4 and 3.5 both serve, so no protobuf or gRPC version can break it the way current
protobuf broke the old `etcd3` package. Raw gateway calls (`post`) give us what the helpers
hide: the header revision of every answer and transactions with compares.

Every failure becomes `EtcdUnavailable`, whose `no_leader` says whether a member answered
that the cluster has no leader (quorum lost) rather than not answering at all.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception

from replicator.coordination.config import CoordinationConfig
from replicator.errors import ReplicatorError

MAX_TXN_KEYS = 100  # etcd refuses a txn of more than 128 operations (--max-txn-ops)


class EtcdUnavailable(ReplicatorError):
    def __init__(self, message: str, *, no_leader: bool = False, sent_at: float = 0.0) -> None:
        super().__init__(message)
        self.no_leader, self.sent_at = no_leader, sent_at


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int


@dataclass(frozen=True)
class Compare:
    key: str
    target: str          # "MOD" or "CREATE" (revision) or "VALUE"
    value: int | bytes   # the revision (0 with CREATE: the key must be absent) or the value
    result: str = "EQUAL"  # or "GREATER" (CREATE > 0: the key exists)

    def encode(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(self.key), "result": self.result,
                                "target": self.target}
        if self.target == "MOD":
            body["mod_revision"] = str(self.value)
        elif self.target == "CREATE":
            body["create_revision"] = str(self.value)
        else:
            assert isinstance(self.value, bytes)
            body["value"] = _b64(self.value)
        return body


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _range_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


class Etcd:
    """One client per endpoint; a call that fails on one endpoint is tried on the next."""

    def __init__(self, config: CoordinationConfig) -> None:
        self.timeout = config.request_timeout
        self._clients = [self._client(url, config) for url in config.endpoints]
        self._current = 0

    @staticmethod
    def _client(url: str, config: CoordinationConfig) -> Etcd3Client:
        parts = urlsplit(url)
        return Etcd3Client(parts.hostname or "127.0.0.1", parts.port or 2379, parts.scheme,
                           ca_cert=str(config.ca) if config.ca else None,
                           cert_key=str(config.key) if config.key else None,
                           cert_cert=str(config.cert) if config.cert else None,
                           timeout=config.request_timeout, api_path="/v3/")

    def _post(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """The answer of the first endpoint that gives one, and when that request was sent."""
        errors: list[str] = []
        no_leader, first_sent = False, time.monotonic()
        for attempt in range(len(self._clients)):
            index = (self._current + attempt) % len(self._clients)
            client = self._clients[index]
            sent_at = time.monotonic()
            try:
                answer: dict[str, Any] = client.post(client.get_url(path), json=body)
            except (Etcd3Exception, requests.RequestException, ValueError) as exc:
                detail = getattr(exc, "detail_text", None) or exc
                text = f"{type(exc).__name__}: {detail}"
                no_leader = no_leader or "no leader" in text or "leader changed" in text
                errors.append(f"{client.host}:{client.port}: {_short(text)}")
                continue
            self._current = index
            return answer, sent_at
        raise EtcdUnavailable("no etcd endpoint answered (" + "; ".join(errors) + ")",
                              no_leader=no_leader, sent_at=first_sent)

    # -- leases -------------------------------------------------------------------------------
    def grant(self, ttl: int) -> tuple[int, int, float]:
        answer, sent_at = self._post("/lease/grant", {"TTL": ttl, "ID": 0})
        return int(answer["ID"]), int(answer["TTL"]), sent_at

    def keepalive(self, lease_id: int) -> tuple[int, float]:
        """The TTL granted from `sent_at` on; 0 if the lease had already expired."""
        answer, sent_at = self._post("/lease/keepalive", {"ID": lease_id})
        return max(0, int(answer.get("result", answer).get("TTL", 0))), sent_at

    def revoke(self, lease_id: int) -> None:
        self._post("/kv/lease/revoke", {"ID": lease_id})

    def without_leader(self) -> bool:
        """Whether a member we reach says the cluster has no leader (quorum lost). A put or a
        keep-alive never says so: it only times out. The maintenance status does."""
        for client in self._clients:
            try:
                answer: dict[str, Any] = client.post(client.get_url("/maintenance/status"),
                                                     json={})
            except (Etcd3Exception, requests.RequestException, ValueError):
                continue
            if any("no leader" in str(e) for e in answer.get("errors", [])) or \
                    not int(answer.get("leader", 0) or 0):
                return True
        return False

    # -- keys ---------------------------------------------------------------------------------
    def range_prefix(self, prefix: str) -> tuple[int, list[Entry]]:
        answer, _ = self._post("/kv/range", {"key": _b64(prefix), "range_end": _range_end(prefix)})
        entries = [Entry(_unb64(kv["key"]).decode(errors="replace"),
                         _unb64(kv.get("value", "")), int(kv.get("mod_revision", 0)),
                         int(kv.get("create_revision", 0)))
                   for kv in answer.get("kvs", [])]
        return int(answer["header"]["revision"]), entries

    def revision(self, prefix: str) -> int:
        """The store's current revision (cheap: counts, returns no keys)."""
        answer, _ = self._post("/kv/range", {"key": _b64(prefix), "range_end": _range_end(prefix),
                                             "count_only": True})
        return int(answer["header"]["revision"])

    def put(self, key: str, value: str | bytes, lease_id: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease_id:
            body["lease"] = str(lease_id)
        answer, _ = self._post("/kv/put", body)
        return int(answer["header"]["revision"])

    def delete(self, key: str) -> None:
        self._post("/kv/deleterange", {"key": _b64(key)})

    def txn(self, compares: Sequence[Compare],
            puts: Iterable[tuple[str, str | bytes]]) -> tuple[bool, int]:
        """Put every `puts` key if every compare holds; (succeeded, revision of the txn)."""
        body = {"compare": [c.encode() for c in compares],
                "success": [{"request_put": {"key": _b64(k), "value": _b64(v)}}
                            for k, v in puts]}
        answer, _ = self._post("/kv/txn", body)
        return bool(answer.get("succeeded", False)), int(answer["header"]["revision"])


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."
