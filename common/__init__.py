"""What every layer shares, below ``data`` and ``models``; imports nothing heavy and nothing else of ours.

    choices     the names the command lines offer (layouts, split methods, augmentation policies,
                demo tasks, architectures) and how an architecture's name is written
    errors      UserError: a mistake the user can fix, printed as one line by the scripts
    progress    progress bars and the periodic progress lines written to logs
"""
