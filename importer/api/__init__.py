"""The ClinikAPI client and everything between it and the socket.

Holds the client (`_client`), its HTTP/1.1 transport (`_http11`), the shared limiter
(`_limiter`), the retry policy (`_retry`), the circuit breaker (`_breaker`), the lookup of
a consent an earlier POST may have made (`_lookup`), and `_build.open_client`, the one
function that assembles a client. It may import the leaf modules
(`importer._errors`, `_options`, `_version`, ...) and nothing else of the package.
"""
