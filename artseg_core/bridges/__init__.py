"""Bridges to other programs: ImageJ/Fiji (scripts, installation, the JVM bridge)."""
