"""A KRaft cluster id for `kafka-storage format -t ID`: 16 random bytes, URL-safe base64.

An id may begin with "-" (1 time in 64), which the storage tool reads as an option, so the
broker never starts; like Kafka's own ``Uuid.randomUuid``, draw again until it does not.

>>> import uuid
>>> ids = iter([uuid.UUID(bytes=b"\\xf8" + bytes(15)), uuid.UUID(bytes=bytes(16))])
>>> cluster_id(lambda: next(ids))
'AAAAAAAAAAAAAAAAAAAAAA'
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable


def cluster_id(uuid4: Callable[[], uuid.UUID] = uuid.uuid4) -> str:
    while True:
        text = base64.urlsafe_b64encode(uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


if __name__ == "__main__":
    print(cluster_id())
