"""The one error the lab raises: its message is the line the operator reads."""


class LabError(Exception):
    """Something the operator has to fix; str(error) says what and how."""
