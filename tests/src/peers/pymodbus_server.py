"""A Modbus TCP server for the driver tests, built on pymodbus (not written
here). Usage: python pymodbus_server.py HOST PORT

The register map is fixed; tests/src/peers.rs documents it (MODBUS_MAP).
Wire address N is list index N (see block()).
"""
import asyncio
import sys

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.server import StartAsyncTcpServer


def block(values):
    data = [0] * 100
    for addr, value in values.items():
        data[addr] = value
    # pymodbus adds 1 to every wire address before it reads a block, so a
    # block starting at 1 makes wire address N the list index N.
    return ModbusSequentialDataBlock(1, data)


def unit1():
    return ModbusSlaveContext(
        hr=block({
            0: 1234,             # u16 1234
            1: 0xFFFE,           # i16 -2
            10: 0x0001, 11: 0x0002,   # u32 big 65538
            20: 0x41AC, 21: 0x0000,   # f32 big 21.5
            30: 0x0000, 31: 0x41AC,   # f32 little 21.5
        }),
        ir=block({
            0: 42,                    # u16 42
            5: 0xFFFE, 6: 0x7960,     # i32 big -100000
        }),
        co=block({0: True, 1: False, 2: True}),
        di=block({0: False, 3: True}),
    )


def unit2():
    return ModbusSlaveContext(
        hr=block({0: 2222}),
        ir=block({}),
        co=block({}),
        di=block({}),
    )


async def main():
    host, port = sys.argv[1], int(sys.argv[2])
    context = ModbusServerContext(slaves={1: unit1(), 2: unit2()}, single=False)
    print(f"pymodbus server on {host}:{port}", flush=True)
    await StartAsyncTcpServer(context=context, address=(host, port))


if __name__ == "__main__":
    asyncio.run(main())
