"""skewless: serving.

grpcio's EventEngine client and listener add ~0.1 ms to every unary round trip on this
2-core machine (measured: do-nothing Score p50 0.50 -> 0.40 ms with both switched off, in
the client and the server process). Unless the environment says otherwise, the older,
still shipped I/O path is used. It must be set before grpc is first imported; the
``skewless`` CLI sets it too (``features.settings.tune_grpc``).
"""

from features.settings import tune_grpc

tune_grpc()
