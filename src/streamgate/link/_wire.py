"""What both ends of the link agree on besides the messages: the batch limit and the token's metadata key."""

from __future__ import annotations

#: A batch (of commands one way, of frames the other) stops growing past this many bytes: well
#: under the 16 MiB a gRPC message may have.
BATCH_BYTES = 4 * 1024 * 1024
#: Metadata key of the link token a `Relay` call must carry.
TOKEN_HEADER = "x-streamgate-link-token"
#: The variable that holds the link token on both sides (the `--link-token` flag's).
TOKEN_ENV = "STREAMGATE_LINK_TOKEN"
