"""Capture: notice every change under the roots (watcher, rescans) and read it consistently."""
