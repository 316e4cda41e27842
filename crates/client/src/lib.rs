//! A small blocking client for kapsel APIs over UNIX sockets.
