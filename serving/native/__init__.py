"""Every use of a library's private API in the serving process, one small module each; the rule each
follows (a version check, the public API as fallback, a test pinning both) is in `core.native`."""
