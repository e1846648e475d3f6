"""The link between a bridge and its core: one `Relay` call that carries every stream of a bridge.

Internal (proto package `streamgate.link.v1`, generated for Python only): clients use
`streamgate.v1.StreamGateService`. Both ends live here so that they share one batch limit and one
token rule: `client` is the bridge's end (it speaks the contract only), `server` the core's end (it
runs the engine). Import the end you are; this package imports neither.
"""
