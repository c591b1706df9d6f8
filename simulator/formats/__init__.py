"""Pure renderers: fleet state in, the bytes a real exporter would serve out.

Each module speaks one upstream format (names, types, help texts, label sets,
value formatting).  None of them does I/O except :func:`sysfs.write_tree`.
"""
