// bloodcv serve: the laboratory web application is Python (bloodcv.web); this subcommand replaces the
// process with `PYTHON -m bloodcv.web ARGS...`, so that signals and the exit status are the server's own.
// `bloodcv analyze --scheduler` hands over to bloodcv.distributed the same way.
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>

#include "commands.hpp"

namespace bloodcv::cli {

void exec_python_module(const std::string& module, const std::vector<std::string>& arguments) {
  const char* env = std::getenv("BLOODCV_PYTHON");
  const std::string python = env && *env ? env : BLOODCV_SERVE_PYTHON;
  std::vector<std::string> args{python, "-m", module};
  args.insert(args.end(), arguments.begin(), arguments.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  throw std::runtime_error(fmt::format("cannot run '{} -m {}': {} (set BLOODCV_PYTHON to a Python with the bloodcv package)", python, module,
                                       std::strerror(errno)));
}

Runner add_serve_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "serve", "Run the laboratory web application (python -m bloodcv.web; `bloodcv serve --help` lists its options)");
  cmd->prefix_command();  // every argument goes to the Python program, --help included
  cmd->set_help_flag();
  return [cmd]() -> int {
    if (!cmd->parsed()) return -1;
    exec_python_module("bloodcv.web", cmd->remaining());
  };
}

}  // namespace bloodcv::cli
