# Sourced by the benchmark scripts: ensure_llama_venv VENV PACKAGE installs PACKAGE (a
# llama-cpp-python requirement) into the throwaway venv VENV unless it imports already.
# llama.cpp is a benchmark baseline only, never a dependency of the project.
ensure_llama_venv() {
    local venv=$1 package=$2 module
    case $package in
        *'[server]'*) module=llama_cpp.server ;;
        *) module=llama_cpp ;;
    esac
    "$venv/bin/python" -c "import $module" 2>/dev/null && return 0
    python3 -m venv "$venv"
    # Built from source for this CPU (-march=native: a fixed AVX-512 list stops with an illegal
    # instruction on CPUs without it). ggml's AMX kernels crash in some VMs, so they are off.
    local cflags=""
    grep -qw amx_int8 /proc/cpuinfo && cflags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$cflags' -DCMAKE_CXX_FLAGS='$cflags'" \
        "$venv/bin/pip" install --quiet "$package"
}
