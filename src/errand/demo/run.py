"""placeholder"""
import argparse
def add_arguments(parser: argparse.ArgumentParser) -> None: ...
def run_demo(args: argparse.Namespace) -> int: return 0
