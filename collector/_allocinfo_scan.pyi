# Types of the compiled allocinfo scanner (collector/_allocinfo_scan.c; see its header).

def scan(
    text: str | bytes, start: int = 0, /
) -> (
    tuple[int, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes]
    | None
): ...
def strings(offsets: bytes, data: bytes, /) -> list[str]: ...
