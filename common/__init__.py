"""What every layer shares, below ``data`` and ``models``; imports nothing heavy and nothing from the library.

    choices     the names the command lines offer (layouts, split methods, augmentation policies,
                demo tasks, architectures) and how an architecture's name is written
"""
