# README.md's first C++ code block must be tests/consumer/main.cpp, word for
# word, so the example a reader copies is the one the package test compiles
# and runs. Run as `cmake -P` with -DREADME=... -DEXAMPLE=...
cmake_minimum_required(VERSION 3.20)
file(READ ${README} readme)
file(READ ${EXAMPLE} example)
string(FIND "${readme}" "```cpp\n" begin)
if(begin EQUAL -1)
  message(FATAL_ERROR "${README} has no ```cpp block; it must show ${EXAMPLE}")
endif()
math(EXPR begin "${begin} + 7")
string(SUBSTRING "${readme}" ${begin} -1 rest)
string(FIND "${rest}" "```" end)
string(SUBSTRING "${rest}" 0 ${end} block)
if(NOT block STREQUAL example)
  message(FATAL_ERROR "README.md's first ```cpp block differs from ${EXAMPLE}; "
                      "copy the file into the README (the package test compiles the file)")
endif()
