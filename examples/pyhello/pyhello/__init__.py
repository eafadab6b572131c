"""Say hello, reproducibly."""

__version__ = "1.0.0"


def greeting(name: str = "world") -> str:
    return f"Hello, {name}!"


def main() -> None:
    print(greeting())
