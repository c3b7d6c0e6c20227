//! Wire types: the only types serialized over HTTP. (Being built.)
