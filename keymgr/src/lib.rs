//! wireseal's private keys.
